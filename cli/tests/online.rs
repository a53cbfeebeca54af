//! The real `gmq` binary against a real `gmq-server`: every online command,
//! GMQ's one-line usage, request-reply, `--follow`, and errors shown with
//! their code and exit status.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{b64, eventually, unb64, Server, GMQ};
use serde_json::{json, Value};

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    (dir, s)
}

#[test]
fn publish_takes_the_payload_from_an_argument_a_file_stdin_or_base64_with_every_field() {
    let (dir, s) = server();
    assert_eq!(s.gmq(&["publish", "jobs", "from an argument"]).ok(), "offset 0\n");
    let file = dir.path().join("payload.bin");
    let binary: Vec<u8> = (0..=255u8).collect();
    std::fs::write(&file, &binary).unwrap();
    assert_eq!(s.gmq(&["publish", "jobs", "--file", file.to_str().unwrap(), "--json"]).json()["offset"], 1);
    s.gmq_in(&["publish", "jobs"], b"from stdin\n").ok();
    s.gmq_in(&["publish", "jobs", "--base64"], format!("{}\n", b64(b"\x00decoded")).as_bytes()).ok();
    let full = s.gmq(&[
        "publish",
        "jobs",
        "x",
        "--event",
        "created",
        "--key",
        "order-17",
        "--header",
        "trace=t-1",
        "--header",
        "reply_to=r",
        "--ttl",
        "60000",
        "--msg-id",
        "order-17-v1",
        "--json",
    ]);
    assert_eq!(full.json(), json!({"offset": 4, "duplicate": false}));
    let again = s.gmq(&["publish", "jobs", "x", "--msg-id", "order-17-v1"]);
    assert_eq!(again.ok(), "offset 4 (duplicate: already stored, nothing stored now)\n");

    let got = s.gmq(&["consume", "jobs", "--max", "10", "--json"]).json_lines();
    let payloads: Vec<Vec<u8>> = got.iter().map(|m| unb64(&m["payload"])).collect();
    assert_eq!(
        payloads,
        [b"from an argument".to_vec(), binary, b"from stdin\n".to_vec(), b"\x00decoded".to_vec(), b"x".to_vec()]
    );
    let m = &got[4];
    assert_eq!(
        (&m["queue"], &m["offset"], &m["event"], &m["key"], &m["msg_id"], &m["deliveries"]),
        (&json!("jobs"), &json!(4), &json!("created"), &json!("order-17"), &json!("order-17-v1"), &json!(1))
    );
    assert_eq!(m["headers"], json!({"trace": "t-1", "reply_to": "r"}));
    assert!(m["timestamp_ms"].as_u64().unwrap() > 0);
}

#[test]
fn lines_publish_one_message_per_line_in_order_and_raw_consume_prints_them_back() {
    let (_dir, s) = server();
    // More than the server's max_batch (10 000): consume asks again.
    let input: String = (0..12_500).map(|i| format!("line {i}\n")).collect();
    let r = s.gmq_in(&["publish", "bulk", "--lines", "--batch", "700", "--json"], input.as_bytes());
    assert_eq!(r.json(), json!({"published": 12_500, "first_offset": 0, "last_offset": 12_499}));
    // CRLF endings are stripped; an empty line is an empty message.
    s.gmq_in(&["publish", "bulk", "--lines"], b"crlf\r\n\nlast").ok();
    let out = s.gmq(&["consume", "bulk", "--max", "20000"]).ok();
    let want: String = input.clone() + "crlf\n\nlast\n";
    assert_eq!(out, want);
    let bad = s.gmq_in(&["publish", "bulk", "--lines", "--base64"], b"aGk=\nnot base64!\n");
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("line 2"), "{}", bad.stderr);
}

#[test]
fn manual_ack_consume_acks_only_what_was_written_and_ack_nack_settle_by_offset() {
    let (_dir, s) = server();
    for i in 0..4 {
        s.gmq(&["publish", "q", &format!("m{i}")]).ok();
    }
    assert_eq!(s.gmq(&["consume", "q", "--manual-ack", "--group", "g"]).ok(), "m0\n");
    let stats = s.gmq(&["stats", "q", "--json"]).json();
    let g = &stats["groups"][0];
    assert_eq!((&g["name"], &g["acked"], &g["pending"]), (&json!("g"), &json!(1), &json!(0)));

    // A lease held by another consumer is settled by offset from the CLI.
    let mut holder = s.conn();
    let r = holder.call(json!({"op": "consume", "queue": "q", "group": "g", "ack": "manual", "max": 2}));
    assert_eq!(r["messages"].as_array().unwrap().len(), 2);
    assert_eq!(s.gmq(&["ack", "q", "1", "--group", "g"]).ok(), "acked 1\n");
    assert_eq!(s.gmq(&["nack", "q", "2", "--group", "g", "--json"]).json(), json!({"nacked": 1}));
    let partly = s.gmq(&["ack", "q", "1", "3", "--group", "g"]).ok();
    assert!(partly.starts_with("acked 0 of 2"), "{partly}");
    let again = s.gmq(&["consume", "q", "--group", "g", "--json"]).json_lines();
    assert_eq!((&again[0]["offset"], &again[0]["deliveries"]), (&json!(2), &json!(2)), "the nacked one comes back");
}

#[test]
fn a_closed_stdout_is_not_an_error_and_unwritten_messages_are_not_acked() {
    let (_dir, s) = server();
    for i in 0..5 {
        s.gmq(&["publish", "q", &format!("m{i}")]).ok();
    }
    // The reader is gone before anything is written.
    let mut child = Command::new(GMQ)
        .args(["-s", &s.addr, "consume", "q", "--follow", "--manual-ack"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = common::wait_output(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "quiet: {}", String::from_utf8_lossy(&out.stderr));
    let left = s.gmq(&["consume", "q", "--max", "10"]).ok();
    assert_eq!(left, "m0\nm1\nm2\nm3\nm4\n", "nothing the CLI could not write was acked");
}

#[test]
fn follow_streams_messages_as_they_are_published_and_stops_after_max() {
    let (_dir, s) = server();
    s.gmq(&["create", "live"]).ok();
    let mut child = Command::new(GMQ)
        .args(["-s", &s.addr, "consume", "live", "--follow", "--max", "3", "--manual-ack", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    eventually("the subscription to be attached", || {
        s.gmq(&["stats", "live", "--json"]).out().contains("\"kind\":\"subscribe\"")
    });
    for i in 0..4 {
        s.gmq(&["publish", "live", &format!("p{i}")]).ok();
        if i < 3 {
            // Each one is printed as it comes, before the next is published.
            let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            assert_eq!((unb64(&v["payload"]), &v["offset"]), (format!("p{i}").into_bytes(), &json!(i)));
        }
    }
    let out = common::wait_output(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the three acks", || s.gmq(&["stats", "live", "--json"]).json()["groups"][0]["acked"] == json!(3));
    assert_eq!(s.gmq(&["consume", "live"]).ok(), "p3\n", "the fourth is left for others");
}

#[test]
fn request_reply_round_trips_through_a_temporary_queue_and_times_out_with_exit_7() {
    let (_dir, s) = server();
    let responder = {
        let mut c = s.conn();
        std::thread::spawn(move || {
            let r = c.call(json!({"op": "consume", "queue": "prices", "wait_ms": 30000, "max": 1}));
            let m = &r["messages"][0];
            let q = m["headers"]["reply_to"].as_str().unwrap().to_owned();
            let cid = m["headers"]["correlation_id"].as_str().unwrap().to_owned();
            let question = String::from_utf8(unb64(&m["payload"])).unwrap();
            // A stray answer first: the CLI waits for its own correlation id.
            c.call(
                json!({"op": "publish", "queue": q, "payload": b64(b"stray"), "headers": {"correlation_id": "other"}}),
            );
            let answer = format!("price of {question}: 17");
            let r = c.call(json!({"op": "publish", "queue": q, "payload": b64(answer.as_bytes()), "headers": {"correlation_id": cid}}));
            assert_eq!(r["ok"], json!(true), "{r}");
        })
    };
    let r = s.gmq(&["request", "prices", "sku-9", "--timeout", "20000"]);
    assert_eq!(r.ok(), "price of sku-9: 17\n");
    responder.join().unwrap();

    let late = s.gmq(&["request", "nobody-home", "hello?", "--timeout", "300"]);
    assert_eq!(late.code, 7, "{late:?}");
    assert!(late.stderr.contains("no reply"), "{}", late.stderr);
    let names: Vec<String> = s.gmq(&["queues", "--json"]).json()["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with("gmq.reply.")), "reply queues are deleted: {names:?}");
}

#[test]
fn gmq_one_line_usage_publishes_takes_and_counts() {
    let (_dir, s) = server();
    let p = s.gmq(&["-q", "legacy", "-a", "P", "-m", &b64(b"hello")]).json();
    assert_eq!(p, json!({"operation": "P", "queue": "legacy", "payload": "", "confirmation": "Y", "error": null}));
    assert_eq!(s.gmq(&["-q", "legacy", "-a", "L"]).json()["payload"], json!("1"));
    assert_eq!(s.gmq(&["-q", "legacy", "-a", "S"]).json()["payload"], json!(b64(b"hello")));
    assert_eq!(s.gmq(&["-q", "legacy", "-a", "S"]).json()["payload"], json!(""));
    let bad = s.gmq(&["-q", "legacy", "-a", "P", "-m", "not base64"]);
    assert_eq!(bad.code, 3, "{bad:?}");
    assert_eq!(bad.json_lines_unchecked()[0]["confirmation"], json!("N"));
    assert!(bad.stderr.contains("gmq: bad_request:"), "{}", bad.stderr);
    assert_eq!(s.gmq(&["-q", "legacy", "-a", "P"]).code, 2, "P needs -m");
    assert_eq!(s.gmq(&["-q", "legacy", "-a", "X"]).code, 2);
}

trait Unchecked {
    fn json_lines_unchecked(&self) -> Vec<Value>;
}

impl Unchecked for common::Run {
    fn json_lines_unchecked(&self) -> Vec<Value> {
        self.out().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

#[test]
fn server_errors_are_shown_with_their_code_and_exit_3_and_an_unreachable_server_exits_4() {
    let (_dir, s) = server();
    let cases: [(&[&str], &str); 5] = [
        (&["consume", "bad name!"], "invalid_name"),
        (&["stats", "missing"], "not_found"),
        (&["delete", "missing"], "not_found"),
        (&["publish", "q", "x", "--header", "a=b", "--ttl", "0"], ""),
        (&["bind", "q", "a..b"], "invalid_name"),
    ];
    for (args, code) in cases {
        let r = s.gmq(args);
        if code.is_empty() {
            r.ok();
            continue;
        }
        assert_eq!(r.code, 3, "{args:?}: {r:?}");
        assert!(r.stderr.starts_with(&format!("gmq: {code}: ")), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "errors go to stderr");
    }
    s.gmq(&["create", "c", "--max-length", "5"]).ok();
    let conflict = s.gmq(&["create", "c", "--max-length", "6"]);
    assert_eq!(conflict.code, 3);
    assert!(conflict.stderr.contains("conflict"), "{}", conflict.stderr);

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = common::run(&["-s", &port.to_string(), "ping"], None);
    assert_eq!(down.code, 4, "{down:?}");
    assert!(down.stderr.starts_with("gmq: "), "{}", down.stderr);
    let usage = common::run(&["consume"], None);
    assert_eq!(usage.code, 2, "{usage:?}");
}

#[test]
fn create_takes_every_setting_and_stats_queues_purge_delete_bind_unbind_ping_report_them() {
    let (_dir, s) = server();
    let created = s.gmq(&[
        "create",
        "full",
        "--fsync",
        "interval:50",
        "--segment-bytes",
        "8192",
        "--max-length",
        "100",
        "--max-bytes",
        "100000",
        "--overflow",
        "drop-oldest",
        "--message-ttl",
        "60000",
        "--ack-timeout",
        "5000",
        "--max-deliveries",
        "3",
        "--dead-letter",
        "full.dead",
        "--dead-letter-expired",
        "--dedup-window",
        "1000",
        "--dedup-max-ids",
        "50",
        "--from",
        "latest",
        "--json",
    ]);
    assert_eq!(created.json(), json!({"created": true}));
    let settings = s.gmq(&["stats", "full", "--json"]).json()["settings"].clone();
    assert_eq!(
        settings,
        json!({"fsync": {"interval_ms": 50}, "segment_bytes": 8192, "max_length": 100, "max_bytes": 100000,
               "overflow": "drop_oldest", "message_ttl_ms": 60000, "ack_timeout_ms": 5000, "max_deliveries": 3,
               "dead_letter": "full.dead", "dead_letter_expired": true, "retention": "acked",
               "dedup_window_ms": 1000, "dedup_max_ids": 50, "from": "latest"})
    );
    assert_eq!(s.gmq(&["create", "full", "--max-length", "100"]).ok(), "full already exists with these settings\n");
    s.gmq(&["create", "stream", "--retention", "stream", "--retention-max-age", "9000"]).ok();
    let r = s.gmq(&["stats", "stream", "--json"]).json()["settings"]["retention"].clone();
    assert_eq!(r, json!({"max_age_ms": 9000, "max_bytes": null}));
    assert_eq!(s.gmq(&["create", "x", "--retention", "acked", "--retention-max-age", "1"]).code, 2);

    s.gmq(&["bind", "full", "orders.*"]).ok();
    let routed = s.gmq(&["publish", "--topic", "orders.eu", "hello", "--json"]).json();
    assert_eq!(routed, json!({"routed": [{"queue": "full", "offset": 0, "duplicate": false}]}));
    let human = s.gmq(&["queues"]).ok();
    let full_row = human.lines().find(|l| l.starts_with("full ")).unwrap();
    assert!(full_row.split_whitespace().nth(1) == Some("1") && full_row.ends_with("ok"), "{human}");
    assert!(human.starts_with("QUEUE"), "{human}");
    assert!(s.gmq(&["stats", "full"]).ok().contains("depth      1"));
    s.gmq(&["unbind", "full", "orders.*"]).ok();
    assert_eq!(s.gmq(&["publish", "--topic", "orders.eu", "again", "--json"]).json(), json!({"routed": []}));
    assert_eq!(s.gmq(&["purge", "full", "--json"]).json(), json!({"purged": 1}));
    assert_eq!(s.gmq(&["delete", "full"]).ok(), "deleted full\n");
    let names = s.gmq(&["queues", "--json"]).json()["queues"].clone();
    assert!(!names.to_string().contains("\"full\""), "{names}");
    let ping = s.gmq(&["ping", "--json"]).json();
    assert_eq!(ping["version"], json!(1));
    assert!(ping["rtt_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn help_has_examples_for_every_command_and_completions_are_generated() {
    let top = common::run(&["--help"], None).ok();
    assert!(top.contains("Exit codes:") && top.contains("-a P -m"), "{top}");
    for cmd in [
        "publish",
        "consume",
        "ack",
        "nack",
        "queues",
        "stats",
        "create",
        "delete",
        "purge",
        "bind",
        "unbind",
        "ping",
        "request",
        "inspect",
        "verify",
        "repair",
        "compact",
        "export",
        "import",
        "completions",
    ] {
        let h = common::run(&[cmd, "--help"], None).ok();
        assert!(h.contains("Example"), "`gmq {cmd} --help` shows an example:\n{h}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let c = common::run(&["completions", shell], None).ok();
        assert!(c.contains("consume") && c.contains("manual-ack"), "{shell}");
    }
}
