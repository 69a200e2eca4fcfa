//! Backend publish API bodies (`POST /publish`, SPEC §7), checked whole as the broker
//! would take them: any bytes are a list of messages or a 400/413, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sidewire::Config;

const CONFIG: &str = r#"
limits: { max_message_bytes: 4096, channels_per_publish: 8 }
channels:
  - { match: "room:*", ephemeral: [typing], history: { size: 10, ttl: 1m } }
  - { match: "user:*", history: { size: 0, ttl: 1m } }
"#;

fn config() -> &'static Config {
    static CONFIG_CELL: OnceLock<Config> = OnceLock::new();
    CONFIG_CELL.get_or_init(|| Config::from_yaml(CONFIG, &|_| None).unwrap_or_else(|e| panic!("{e}")))
}

fuzz_target!(|body: &[u8]| {
    let config = config();
    if let Ok(messages) = sidewire::publish::parse_body(config, body) {
        assert!(!messages.is_empty());
        for m in &messages {
            assert!(!m.drafts.is_empty() && m.drafts.len() <= config.limits.channels_per_publish);
            for (draft, _) in &m.drafts {
                assert!(draft.data.get().len() <= config.limits.max_message_bytes);
                // Compacted data is still the same JSON.
                assert!(serde_json::from_str::<serde_json::Value>(draft.data.get()).is_ok());
            }
        }
    }
});
