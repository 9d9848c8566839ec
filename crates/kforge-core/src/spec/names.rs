//! Names the operator typed that the file does not have: the closest ones, never the
//! whole list (a 1000-node file's names would become the message).

/// ", did you mean `x`?" with the closest names (a typo's distance), or nothing: a
/// 1000-node file's names never become the message.
pub fn did_you_mean(name: &str, known: &[&str]) -> String {
    let mut close: Vec<(usize, &str)> =
        known.iter().map(|k| (edit_distance(name, k), *k)).filter(|(d, _)| *d <= 2.max(name.len() / 3)).collect();
    close.sort();
    let names: Vec<String> = close.iter().take(3).map(|(_, k)| format!("`{k}`")).collect();
    if names.is_empty() { String::new() } else { format!("; did you mean {}?", names.join(" or ")) }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The help for a name the file does not have: the closest names, or how many there are.
pub fn unknown_name_help(name: &str, known: &[&str]) -> String {
    let close = did_you_mean(name, known);
    match close.strip_prefix("; ") {
        Some(close) => close.to_string(),
        None if known.len() <= 8 => format!("nodes in this file: {}", known.join(", ")),
        None => format!("none of the file's {} node names is close to `{name}`", known.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_gets_the_closest_names_and_a_big_file_never_lists_them_all() {
        let many: Vec<String> = (0..1000).map(|i| format!("node-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let help = unknown_name_help("node-1000", &many);
        assert!(help.starts_with("did you mean `node-100`"), "{help}");
        assert!(help.len() < 80, "{help}");
        assert_eq!(unknown_name_help("gateway", &many), "none of the file's 1000 node names is close to `gateway`");
        assert_eq!(unknown_name_help("gateway", &["cp-1", "cp-2"]), "nodes in this file: cp-1, cp-2");
        assert_eq!(did_you_mean("lab-44", &["lab-1", "lab-4"]), "; did you mean `lab-4` or `lab-1`?");
    }
}
