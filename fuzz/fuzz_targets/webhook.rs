//! `X-Sidewire-Signature` (SPEC §7): any header text is checked without a panic; a
//! signature sidewire makes verifies, for the body it signed only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidewire::config::Secret;
use sidewire::webhook::{signature, verify};

fuzz_target!(|input: (&str, u64, &[u8], &str)| {
    let (secret, t, body, header) = input;
    let secret = Secret::new(secret);
    let _ = verify(&secret, header, body);
    let signed = signature(&secret, t, body);
    assert_eq!(verify(&secret, &signed, body), Some(t));
    let mut other = body.to_vec();
    other.push(b'x');
    assert_eq!(verify(&secret, &signed, &other), None);
});
