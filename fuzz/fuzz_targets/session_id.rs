//! Opens arbitrary text as a client's session id, as the gateway does with every
//! `Mcp-Session-Id` it is sent, and seals the input as a session to open it again. Any panic
//! is a finding, and so is a forged or altered id that opens, an id that opens under another
//! grant, or a sealed session that comes back different.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portcullis_core::{GrantId, Keyring};
use portcullis_gateway::sessions::{EventIds, Refused, Session, SessionKeys};

static GRANTS: LazyLock<(GrantId, GrantId)> = LazyLock::new(|| {
    (
        "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
            .parse()
            .expect("a grant id"),
        "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c"
            .parse()
            .expect("a grant id"),
    )
});

fuzz_target!(|data: &[u8]| {
    // Fresh keys for each input, the newer active: libFuzzer learns the values the target
    // compares, ids sealed under earlier inputs among them, and those must not count as forged.
    let (_, old) = Keyring::generate(1);
    let (_, new) = Keyring::generate(2);
    let ring = || Keyring::parse(&format!("{new},{old}")).expect("generated keys parse");
    let keys = SessionKeys::new(ring(), None);
    let aging = SessionKeys::new(ring(), Some(Duration::from_secs(3600)));
    let (grant, other) = *GRANTS;
    let text = String::from_utf8_lossy(data);

    // Nothing the fuzzer writes was sealed by these keys.
    assert_eq!(keys.unwrap(grant, &text), Err(Refused::NotIssued));
    assert!(aging.unwrap(grant, &text).is_err());
    assert_eq!(keys.reseal(grant, &text), None);
    assert_eq!(aging.ends(grant, &text), None);
    let _ = keys.sealed_by_active(&text);
    let events = EventIds::new(keys.keyring().clone(), grant);
    assert_eq!(events.open(&text), None);

    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let payload = String::from_utf8_lossy(rest).into_owned();
    let session = if knobs & 1 == 0 {
        Session::Upstream(payload)
    } else {
        Session::Legacy(payload)
    };
    let sealed = keys.wrap(grant, &session);
    assert!(keys.sealed_by_active(&sealed));
    assert_eq!(keys.unwrap(grant, &sealed).as_ref(), Ok(&session));
    assert_eq!(aging.unwrap(grant, &sealed).as_ref(), Ok(&session));
    assert_eq!(keys.unwrap(other, &sealed), Err(Refused::NotIssued));
    assert_eq!(
        events.open(&sealed),
        None,
        "a session id is not an event id"
    );
    let resealed = keys.reseal(grant, &sealed).expect("a timed id reseals");
    assert_eq!(keys.unwrap(grant, &resealed).as_ref(), Ok(&session));
    assert!(aging.ends(grant, &sealed).is_some());

    // One character changed anywhere: the id no longer opens.
    let mut altered = sealed.clone().into_bytes();
    let at = usize::from(knobs >> 1) % altered.len();
    let with = rest.first().copied().unwrap_or(b'A');
    altered[at] = if with.is_ascii_graphic() && with != altered[at] {
        with
    } else {
        altered[at] ^ 1
    };
    let altered = String::from_utf8_lossy(&altered);
    if altered.trim() != sealed {
        assert_eq!(
            keys.unwrap(grant, &altered),
            Err(Refused::NotIssued),
            "{altered}"
        );
    }
});
