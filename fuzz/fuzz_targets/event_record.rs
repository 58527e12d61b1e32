//! One ring buffer record through the reader's decoding: the record
//! becomes an `Event`, which the reader prints as a JSON line.

#![no_main]

use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use parapet::identity::Identities;
use parapet::reader::{Clock, Namer};

static NAMER: LazyLock<Namer> = LazyLock::new(|| Namer {
    node: "fuzz-node".to_owned(),
    identities: Arc::new(RwLock::new(Identities::new(Duration::from_secs(60)))),
});

fuzz_target!(|data: &[u8]| {
    let clock = Clock::now();
    if let Ok(event) = NAMER.decode(data, &clock) {
        serde_json::to_string(&event).expect("an event always serializes");
    }
});
