//! Randomness at the edges of the hub.

use ring::rand::SecureRandom;

/// `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // The OS RNG failing is not something a request can recover from.
    ring::rand::SystemRandom::new().fill(&mut buf).expect("the system random number generator failed");
    buf
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    hex::encode(random_bytes(n))
}
