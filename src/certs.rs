//! `kforge certs check|renew`: the certificates kforge issued, from the secrets bundle.
//!
//! `check` reads the bundle only (what is on the hosts is `kforge doctor`'s job).
//! `renew` re-issues leaves — the ones due within `pki.renewBeforeDays`, or those
//! named — and delivers them with the normal `apply`: only files whose hashes changed
//! are written and only the units that read them restart.

use serde::Serialize;
use time::OffsetDateTime;

use kforge_core::pki::{CertSummary, summary};
use kforge_core::secrets::SecretsBundle;

use crate::cli::Format;
use crate::commands::CliError;

#[derive(Debug, Serialize)]
struct Row {
    id: String,
    kind: &'static str,
    #[serde(flatten)]
    cert: CertSummary,
    days_left: i64,
    status: &'static str,
}

fn rows(bundle: &SecretsBundle, renew_before_days: i64, now: OffsetDateTime) -> Vec<Row> {
    let cas = bundle.cas.iter().map(|(id, c)| (id, "CA", &c.cert));
    let leaves = bundle.certificates.iter().map(|(id, c)| (id, "leaf", &c.pair.cert));
    cas.chain(leaves)
        .filter_map(|(id, kind, pem)| {
            let cert = summary(pem)?;
            let days_left = (cert.not_after - now).whole_days();
            let status = if cert.not_after <= now {
                "EXPIRED"
            } else if kind == "leaf" && days_left < renew_before_days {
                "due"
            } else {
                "ok"
            };
            Some(Row { id: id.clone(), kind, cert, days_left, status })
        })
        .collect()
}

/// The expiry table; exit 2 if any certificate has expired, 3 if leaves are due.
pub fn check(bundle: &SecretsBundle, renew_before_days: i64, format: Format) -> Result<(), CliError> {
    let rows = rows(bundle, renew_before_days, OffsetDateTime::now_utc());
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialize")),
        Format::Text => {
            println!("{:<28} {:<5} {:<20} {:<20} {:>6}  STATUS", "CERTIFICATE", "KIND", "ISSUER", "EXPIRES", "DAYS");
            // Issuers are kforge's CAs, `kforge-<cluster>-<ca>`: show the CA's part.
            let prefix = format!("kforge-{}-", bundle.cluster);
            for r in &rows {
                let issuer = match r.kind {
                    "CA" => "(self-signed)",
                    _ => r.cert.issuer.strip_prefix(&prefix).unwrap_or(&r.cert.issuer),
                };
                println!(
                    "{:<28} {:<5} {:<20} {:<20} {:>6}  {}",
                    r.id, r.kind, issuer, r.cert.expires, r.days_left, r.status
                );
            }
            let due = rows.iter().filter(|r| r.status == "due").count();
            println!(
                "{} certificates; {due} leaves due within pki.renewBeforeDays ({renew_before_days} days): `kforge apply` or `kforge certs renew` re-issues them",
                rows.len()
            );
        }
    }
    if rows.iter().any(|r| r.status == "EXPIRED") {
        Err(CliError::Findings(2))
    } else if rows.iter().any(|r| r.status == "due") {
        Err(CliError::Findings(3))
    } else {
        Ok(())
    }
}

/// Drop the named leaves from the bundle so the next reconcile issues them anew.
/// Unknown names are refused before anything changes.
pub fn forget(bundle: &mut SecretsBundle, ids: &[String]) -> Result<Vec<(String, String)>, CliError> {
    let unknown: Vec<&String> = ids.iter().filter(|id| !bundle.certificates.contains_key(*id)).collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = bundle.certificates.keys().map(String::as_str).collect();
        return Err(CliError::Other(format!(
            "no leaf certificate named {}; the bundle's leaves: {} (CAs are not renewed here)",
            unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            known.join(", ")
        )));
    }
    Ok(ids
        .iter()
        .map(|id| {
            let old = bundle.certificates.remove(id).expect("checked above");
            (id.clone(), summary(&old.pair.cert).map(|s| s.serial).unwrap_or_default())
        })
        .collect())
}
