//! One ring buffer record through the reader: the record becomes an event
//! line, which must be one line of JSON that reads back as an `Event`.

#![no_main]

use std::sync::{Arc, RwLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use parapet::event::Event;
use parapet::identity::Identities;
use parapet::reader::{Clock, Namer};

fuzz_target!(|data: &[u8]| {
    let identities = Arc::new(RwLock::new(Identities::new(Duration::from_secs(60))));
    let mut namer = Namer::new("fuzz-node".to_owned(), identities);
    let clock = Clock::now();
    if let Ok(published) = namer.name(data, &clock) {
        let (line, newline) = published.line.split_at(published.line.len() - 1);
        assert_eq!(newline, b"\n", "an event line ends with its newline");
        assert!(!line.contains(&b'\n'), "an event line is one line");
        serde_json::from_slice::<Event>(line).expect("an event line reads back as an Event");
    }
});
