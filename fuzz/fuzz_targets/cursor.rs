//! Cursors and message ids (SPEC §3): parsing any client text, and the text form of a
//! parsed cursor parsing back to the same cursor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidewire::hub::cursor::{Cursor, Epoch, MessageId};

fuzz_target!(|text: &str| {
    if let Some(c) = Cursor::parse(text) {
        assert_eq!(Cursor::parse(&c.to_string()).as_ref(), Some(&c), "{text:?}");
    }
    if let Some(id) = MessageId::parse(text) {
        assert_eq!(MessageId::parse(&id.to_string()), Some(id), "{text:?}");
    }
    if let Some(e) = Epoch::parse(text) {
        assert_eq!(Epoch::parse(&e.to_string()), Some(e), "{text:?}");
    }
});
