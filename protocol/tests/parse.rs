//! Request parsing: every way a request can be wrong gets the code
//! PROTOCOL.md gives it, and every field's default holds.

use gmq_protocol::*;
use serde_json::json;

fn req(v: serde_json::Value) -> Request {
    match parse(v.to_string().as_bytes()) {
        Parsed::Request { request, .. } => request,
        other => panic!("{v}: {other:?}"),
    }
}

fn code(line: &str) -> (ErrorCode, String) {
    match parse(line.as_bytes()) {
        Parsed::Invalid { error, .. } => (error.code, error.message),
        other => panic!("{line}: expected an error, got {other:?}"),
    }
}

#[test]
fn defaults() {
    let Request::Consume(c) = req(json!({"op":"consume","queue":"q"})) else { panic!() };
    assert_eq!(
        (c.group.as_str(), c.max, c.wait_ms, c.ack, c.events, c.from),
        ("default", 1, 0, AckMode::Auto, None, None)
    );
    let Request::Subscribe(c) = req(json!({"op":"subscribe","queue":"q"})) else { panic!() };
    assert_eq!(c.max, DEFAULT_PREFETCH);
    assert_eq!(
        req(json!({"op":"ack","queue":"q","offsets":[1,2]})),
        Request::Ack { queue: "q".into(), group: "default".into(), offsets: vec![1, 2] }
    );
    assert_eq!(
        req(json!({"op":"nack","queue":"q","group":"g","offsets":[3]})),
        Request::Nack { queue: "q".into(), group: "g".into(), offsets: vec![3], delay_ms: 0, reason: None }
    );
    // null is "not given".
    let Request::Consume(c) = req(json!({"op":"consume","queue":"q","max":null,"group":null})) else { panic!() };
    assert_eq!((c.max, c.group.as_str()), (1, "default"));
}

#[test]
fn publish_shapes() {
    let Request::Publish { queue, messages, batch } = req(json!({
        "op":"publish","queue":"q","payload":"aGk=","event":"e","key":"k","headers":{"a":"1","b":"2"},"ttl_ms":5,"msg_id":"m"
    })) else {
        panic!()
    };
    assert_eq!((queue.as_str(), batch), ("q", false));
    let m = &messages[0];
    assert_eq!(&m.payload[..], b"hi");
    assert_eq!(
        (m.event.as_deref(), m.key.as_deref(), m.ttl_ms, m.msg_id.as_deref()),
        (Some("e"), Some("k"), Some(5), Some("m"))
    );
    assert_eq!(m.headers, vec![("a".into(), "1".into()), ("b".into(), "2".into())]);
    let Request::Publish { messages, batch, .. } =
        req(json!({"op":"publish","queue":"q","messages":[{"payload":""},{"payload":"AA=="}]}))
    else {
        panic!()
    };
    assert!(batch);
    assert_eq!(messages.len(), 2);
    assert_eq!(&messages[1].payload[..], &[0]);
    let Request::PublishTopic { topic, .. } = req(json!({"op":"publish","topic":"a.b","payload":""})) else { panic!() };
    assert_eq!(topic, "a.b");
}

#[test]
fn settings_and_from() {
    let Request::Create { settings, .. } = req(json!({
        "op":"create","queue":"q","fsync":{"interval_ms":10},"overflow":"drop_oldest","retention":{"max_age_ms":5},
        "max_deliveries":3,"dead_letter":"dead","dead_letter_expired":true,"from":{"time_ms":7}
    })) else {
        panic!()
    };
    assert_eq!(settings.fsync, Some(Fsync::Interval(10)));
    assert_eq!(settings.overflow, Some(Overflow::DropOldest));
    assert_eq!(settings.retention, Some(Retention::Stream { max_age_ms: Some(5), max_bytes: None }));
    assert_eq!(settings.max_deliveries, Some(3));
    assert_eq!(settings.from, Some(Start::Time(7)));
    for (v, f) in [(json!("latest"), Start::Latest), (json!("oldest"), Start::Oldest), (json!(42), Start::Offset(42))] {
        let Request::Consume(c) = req(json!({"op":"consume","queue":"q","from":v})) else { panic!() };
        assert_eq!(c.from, Some(f));
    }
}

#[test]
fn error_codes() {
    use ErrorCode::*;
    let cases: &[(&str, ErrorCode, &str)] = &[
        ("not json", BadJson, ""),
        ("{\"op\":\"ping\"", BadJson, ""),
        ("[1,2]", BadRequest, "JSON object"),
        ("{}", BadRequest, "'op'"),
        (r#"{"op":5}"#, BadRequest, "'op'"),
        (r#"{"op":"fly"}"#, UnknownOp, "fly"),
        (r#"{"op":"ping","extra":1}"#, BadRequest, "unknown field 'extra'"),
        (r#"{"op":"consume"}"#, BadRequest, "missing field 'queue'"),
        (r#"{"op":"consume","queue":"q","max":"5"}"#, BadRequest, "'max'"),
        (r#"{"op":"consume","queue":"q","max":-1}"#, BadRequest, "'max'"),
        (r#"{"op":"consume","queue":"q","max":1.5}"#, BadRequest, "'max'"),
        (r#"{"op":"consume","queue":"q","max":true}"#, BadRequest, "'max'"),
        (r#"{"op":"consume","queue":"q","max":0}"#, BadRequest, "'max'"),
        (r#"{"op":"consume","queue":"q","wait_ms":1e3}"#, BadRequest, "'wait_ms'"),
        (r#"{"op":"consume","queue":"q","ack":"sometimes"}"#, BadRequest, "'ack'"),
        (r#"{"op":"consume","queue":"q","events":"e"}"#, BadRequest, "'events'"),
        (r#"{"op":"consume","queue":"q","from":"yesterday"}"#, BadRequest, "'from'"),
        (r#"{"op":"consume","queue":"../x"}"#, InvalidName, "../x"),
        (r#"{"op":"consume","queue":""}"#, InvalidName, "queue"),
        (r#"{"op":"consume","queue":".hidden"}"#, InvalidName, "queue"),
        (r#"{"op":"consume","queue":"q","group":"a/b"}"#, InvalidName, "group"),
        (r#"{"op":"consume","queue":7}"#, BadRequest, "'queue'"),
        (r#"{"op":"publish","queue":"q"}"#, BadRequest, "'payload'"),
        (r#"{"op":"publish","payload":""}"#, BadRequest, "'queue'"),
        (r#"{"op":"publish","queue":"q","topic":"t","payload":""}"#, BadRequest, "not both"),
        (r#"{"op":"publish","queue":"q","payload":"aGk"}"#, BadRequest, "base64"),
        (r#"{"op":"publish","queue":"q","payload":"aG k="}"#, BadRequest, "base64"),
        (r#"{"op":"publish","queue":"q","payload":"_-8="}"#, BadRequest, "base64"),
        (r#"{"op":"publish","queue":"q","payload":5}"#, BadRequest, "'payload'"),
        (r#"{"op":"publish","queue":"q","payload":"","headers":{"a":1}}"#, BadRequest, "headers.a"),
        (r#"{"op":"publish","queue":"q","payload":"","ttl_ms":-5}"#, BadRequest, "'ttl_ms'"),
        (r#"{"op":"publish","queue":"q","messages":[]}"#, BadRequest, "at least one"),
        (r#"{"op":"publish","queue":"q","messages":[{"payload":"x"}]}"#, BadRequest, "messages[0].payload"),
        (r#"{"op":"publish","queue":"q","messages":[{"payload":"","nope":1}]}"#, BadRequest, "messages[0].nope"),
        (r#"{"op":"publish","queue":"q","messages":[{"payload":""}],"payload":""}"#, BadRequest, "not both"),
        (r#"{"op":"publish","topic":"t","messages":[{"payload":""}]}"#, BadRequest, "batch"),
        (r#"{"op":"ack","queue":"q"}"#, BadRequest, "'offsets'"),
        (r#"{"op":"ack","queue":"q","offsets":[1,"2"]}"#, BadRequest, "'offsets'"),
        (r#"{"op":"create","queue":"q","fsync":"sometimes"}"#, BadRequest, "'fsync'"),
        (r#"{"op":"create","queue":"q","fsync":{"interval_ms":0}}"#, BadRequest, "'fsync'"),
        (r#"{"op":"create","queue":"q","max_deliveries":5000000000}"#, BadRequest, "max_deliveries"),
        (r#"{"op":"create","queue":"q","retention":{"max_age":5}}"#, BadRequest, "retention.max_age"),
        (r#"{"op":"create","queue":"q","ack_timeout":5}"#, BadRequest, "unknown field 'ack_timeout'"),
        (r#"{"op":"create","queue":"q","dead_letter":"../x"}"#, InvalidName, "dead_letter"),
        (r#"{"op":"ping","id":1.5}"#, BadRequest, "'id'"),
        (r#"{"op":"ping","id":[1]}"#, BadRequest, "'id'"),
        (r#"{"op":"unsubscribe"}"#, BadRequest, "'sub'"),
        (r#"{"op":"bind","queue":"q"}"#, BadRequest, "'pattern'"),
    ];
    for (line, want, needle) in cases {
        let (got, msg) = code(line);
        assert_eq!(got, *want, "{line}: {msg}");
        assert!(msg.contains(needle), "{line}: message {msg:?} should name {needle:?}");
    }
    let long = format!(r#"{{"op":"consume","queue":"{}"}}"#, "x".repeat(201));
    assert_eq!(code(&long).0, InvalidName);
    let ok = format!(r#"{{"op":"consume","queue":"{}"}}"#, "x".repeat(200));
    assert!(matches!(parse(ok.as_bytes()), Parsed::Request { .. }));
}

#[test]
fn ids_are_echoed_even_on_errors() {
    for (line, id) in [
        (r#"{"op":"fly","id":7}"#, Id::Uint(7)),
        (r#"{"op":"consume","id":"x"}"#, Id::Str("x".into())),
        (r#"{"op":"ping","id":-3,"bad":1}"#, Id::Int(-3)),
    ] {
        let Parsed::Invalid { id: Some(got), .. } = parse(line.as_bytes()) else { panic!("{line}") };
        assert_eq!(got, id);
        let reply = Reply::error(Some(&got), &WireError::bad_request("x"));
        let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(
            v["id"],
            serde_json::to_value(match &id {
                Id::Uint(n) => json!(n),
                Id::Int(n) => json!(n),
                Id::Str(s) => json!(s),
            })
            .unwrap()
        );
    }
}

#[test]
fn legacy_requests() {
    let Parsed::Legacy(l) = parse(br#"{"operation":"P","queue":"q","payload":"aGk=","confirmation":"","error":null}"#)
    else {
        panic!()
    };
    assert_eq!((l.operation.as_str(), l.queue.as_str(), l.payload.as_str()), ("P", "q", "aGk="));
    let Parsed::Legacy(l) = parse(br#"{"operation":"L","queue":"q"}"#) else { panic!() };
    assert_eq!(l.payload, "");
    let Parsed::LegacyInvalid { operation, queue, error } = parse(br#"{"operation":"P","queue":"q","payload":5}"#)
    else {
        panic!()
    };
    assert_eq!((operation.as_str(), queue.as_str(), error.code), ("P", "q", ErrorCode::BadRequest));
    assert!(error.message.contains("'payload'"), "{}", error.message);
    let reply = legacy_reply("S", "q", "", None);
    assert_eq!(
        &reply[..],
        b"{\"operation\":\"S\",\"queue\":\"q\",\"payload\":\"\",\"confirmation\":\"Y\",\"error\":null}\n"
    );
    let reply = legacy_reply("P", "q", "", Some("storage: disk full"));
    let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!((v["confirmation"].as_str(), v["error"].as_str()), (Some("N"), Some("storage: disk full")));
}

#[test]
fn delivered_messages_encode_every_field() {
    let headers = vec![("reply_to".to_string(), "r\"q".to_string())];
    let d = Delivered {
        offset: 42,
        payload: b"hello",
        event: Some("created"),
        key: Some("k"),
        headers: &headers,
        timestamp_ms: 1,
        deliveries: 2,
        ttl_ms: None,
        msg_id: Some("m"),
    };
    let frame = push_frame("s1", &d);
    let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
    assert_eq!(
        v,
        json!({"sub":"s1","message":{"offset":42,"payload":"aGVsbG8=","event":"created","key":"k","headers":{"reply_to":"r\"q"},"msg_id":"m","timestamp_ms":1,"deliveries":2}})
    );
    assert!(frame.ends_with(b"\n") && !frame[..frame.len() - 1].contains(&b'\n'));
}

/// Arbitrary bytes never panic the parser or the framer, and a line the
/// framer yields never exceeds the cap.
#[test]
fn garbage_never_panics() {
    let seed: u64 = std::env::var("GMQ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    println!("seed {seed}");
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet = b"{}[]\":,\\ \n\r0123456789-.eEtrufalsn\x00\xff\xc3op";
    for _ in 0..2000 {
        let len = (next() % 200) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
        let _ = parse(&bytes);
        let mut f = LineFramer::new(64);
        for chunk in bytes.chunks(1 + (next() % 7) as usize) {
            f.extend(chunk);
            while let Ok(Some(l)) = f.next_line() {
                assert!(l.len() <= 64);
                let _ = parse(&l);
            }
        }
    }
}
