//! SSE encoder round trip (SPEC §5): an event name a publish may carry and any data,
//! encoded by sidewire, parsed back per the WHATWG event-stream rules, give the same
//! event and data (a JSON string as its text, line breaks normalized to `\n`; any other
//! value as compact JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|input: (Option<&str>, &str)| {
    let (event, data) = input;
    // What `publish::prepare` lets through.
    let event = event.filter(|e| !e.is_empty() && e.len() <= 64 && !e.contains(['\n', '\r']));
    let raw = match serde_json::from_str::<Box<RawValue>>(data) {
        Ok(raw) => sidewire::publish::compact(&raw),
        Err(_) => match serde_json::to_string(data).map(RawValue::from_string) {
            Ok(Ok(raw)) => raw,
            _ => return,
        },
    };
    let expected = match serde_json::from_str::<String>(raw.get()) {
        Ok(text) if raw.get().starts_with('"') => text.replace("\r\n", "\n").replace('\r', "\n"),
        _ => raw.get().to_owned(),
    };
    let encoded = sidewire::sse::encode_body(event, &raw);
    let events = parse(&encoded);
    assert_eq!(events.len(), 1, "{encoded:?}");
    assert_eq!(events[0], (event.unwrap_or("message").to_owned(), expected), "{encoded:?}");
});

/// The event-stream interpretation (WHATWG HTML §9.2.6), for complete events.
fn parse(stream: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let (mut event, mut data, mut has_data) = (String::new(), String::new(), false);
    let normalized = stream.replace("\r\n", "\n").replace('\r', "\n");
    for line in normalized.split_terminator('\n') {
        if line.is_empty() {
            if has_data {
                data.pop(); // the last line's "\n"
                let name = if event.is_empty() { "message".to_owned() } else { std::mem::take(&mut event) };
                out.push((name, std::mem::take(&mut data)));
            }
            event.clear();
            data.clear();
            has_data = false;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
                has_data = true;
            }
            _ => {}
        }
    }
    out
}
