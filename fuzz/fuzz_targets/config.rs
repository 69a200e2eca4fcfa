//! Config YAML → validated `Config` (SPEC §2): any text is a config or a list of
//! problems, never a panic, a stack overflow or a blow-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidewire::Config;

fuzz_target!(|text: &str| {
    let env = |name: &str| (name.len() % 2 == 0).then(|| format!("v-{name}"));
    if let Ok(config) = Config::from_yaml(text, &env) {
        let _ = config.warnings();
        assert!(config.restart_required(&config).is_empty(), "a config differs from itself");
    }
});
