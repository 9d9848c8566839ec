//! The one place kforge draws randomness from: the operating system.

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    buf
}

/// `n` random bytes as lowercase hex (tokens).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    crate::hashing::hex(&buf)
}

/// A new age X25519 identity (`AGE-SECRET-KEY-1…`), from the OS generator.
pub fn age_identity() -> String {
    use age::secrecy::ExposeSecret;
    age::x25519::Identity::generate().to_string().expose_secret().to_string()
}
