//! Channel names and patterns (SPEC §3): the checking constructors, glob matching, and
//! `covers` (a rule shadowed by an earlier one) agreeing with `matches`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidewire::names::{ChannelName, ChannelPattern};

fuzz_target!(|input: (&str, &str, &str)| {
    let (a, b, name) = input;
    let name_ok = ChannelName::new(name).is_ok();
    assert_eq!(name_ok, !name.is_empty() && name.len() <= 200 && name.bytes().all(sidewire::names::is_channel_byte));
    let (Ok(p), Ok(q)) = (ChannelPattern::new(a), ChannelPattern::new(b)) else { return };
    if !a.contains('*') {
        assert_eq!(p.matches(name), a == name, "a literal pattern matches itself only");
    }
    // Soundness of `covers`: whatever `q` matches, a pattern covering it matches too.
    if p.covers(&q) && q.matches(name) {
        assert!(p.matches(name), "{a:?} covers {b:?} but not {name:?}");
    }
    // A pattern matches the name spelled by its own literals with each `*` removed.
    let literal = a.replace('*', "");
    assert!(p.matches(&literal), "{a:?} does not match {literal:?}");
});
