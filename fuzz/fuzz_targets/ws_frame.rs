//! Client WebSocket text frames (SPEC §4): any text is a request or a `bad_request`
//! error, and the error frame sidewire would send back is valid JSON echoing `ref`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidewire::hub::cursor::Cursor;
use sidewire::protocol::{self, ClientMsg, ErrorCode};

fuzz_target!(|text: &str| {
    match protocol::parse(text) {
        Ok((msg, reference)) => {
            if let ClientMsg::Subscribe { channel, since, .. } = &msg {
                let _ = sidewire::policy::channel_name(channel);
                let _ = since.as_deref().map(Cursor::parse);
            }
            check_frame(&protocol::encode("pong", serde_json::json!({}), reference.as_deref()), reference.as_deref());
        }
        Err(e) => {
            let frame = protocol::error(ErrorCode::BadRequest, &e.message, e.reference.as_deref());
            check_frame(&frame, e.reference.as_deref());
        }
    }
});

fn check_frame(frame: &str, reference: Option<&serde_json::value::RawValue>) {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap_or_else(|e| panic!("{e}: {frame}"));
    if let Some(r) = reference {
        let sent: serde_json::Value = serde_json::from_str(r.get()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.get("ref"), Some(&sent), "{frame}");
    }
}
