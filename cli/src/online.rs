//! Commands that talk to a server, through `gmq-client`.

use std::io::{BufRead, Read};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use gmq_client::{Client, ConsumeOptions, Delivery, Message, Options};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::{self, Cli, Command};
use crate::out::{human_bytes, local, table, Fail, Out, Res};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Runs an online command on a single-threaded runtime.
pub fn run(cli: &Cli, cmd: &Command) -> Res {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail::Other(format!("starting the runtime: {e}")))?;
    rt.block_on(async {
        let client = connect(cli).await?;
        let mut out = Out::new();
        let r = command(cli, cmd, &client, &mut out).await;
        // What was printed reaches the reader even when the command failed.
        let flushed = out.flush();
        r.and(flushed)
    })
}

async fn connect(cli: &Cli) -> Res<Client> {
    let t = Duration::from_millis(cli.timeout_ms.max(1));
    let opts = Options { connect_timeout: t, request_timeout: Some(t) };
    let client = Client::connect_with(&cli.server, opts).await.map_err(|e| match e {
        gmq_client::Error::Timeout(_) => Fail::Connection(format!("connecting to {}: timed out", cli.server)),
        e => Fail::from(e),
    })?;
    if let Some(user) = &cli.user {
        client.auth(user, cli.password.as_deref().unwrap_or_default()).await?;
    }
    Ok(client)
}

async fn command(cli: &Cli, cmd: &Command, c: &Client, out: &mut Out) -> Res {
    match cmd {
        Command::Publish(p) => publish(cli, p, c, out).await,
        Command::Consume(a) => consume(cli, a, c, out).await,
        Command::Ack(a) => {
            let n = c.ack(&a.queue, &a.group, &a.offsets).await?;
            settled(cli, out, "acked", n, a.offsets.len())
        }
        Command::Nack(a) => {
            let n = c.nack(&a.queue, &a.group, &a.offsets, a.delay).await?;
            settled(cli, out, "nacked", n, a.offsets.len())
        }
        Command::Queues => queues(cli, c, out).await,
        Command::Stats(q) => stats(cli, &q.queue, c, out).await,
        Command::Create(a) => {
            let created = c.create(&a.queue, create_settings(a)?).await?;
            if cli.json {
                return out.json(&json!({ "created": created }));
            }
            out.line(if created {
                format!("created {}", a.queue)
            } else {
                format!("{} already exists with these settings", a.queue)
            })
        }
        Command::Delete(q) => {
            c.delete(&q.queue).await?;
            done(cli, out, json!({ "deleted": q.queue }), format!("deleted {}", q.queue))
        }
        Command::Purge(q) => {
            let n = c.purge(&q.queue).await?;
            done(cli, out, json!({ "purged": n }), format!("purged {n} messages from {}", q.queue))
        }
        Command::Bind(b) => {
            c.bind(&b.queue, &b.pattern).await?;
            done(cli, out, json!({ "bound": true }), format!("{} <- {}", b.queue, b.pattern))
        }
        Command::Unbind(b) => {
            c.unbind(&b.queue, &b.pattern).await?;
            done(cli, out, json!({ "unbound": true }), format!("{} no longer <- {}", b.queue, b.pattern))
        }
        Command::Ping => {
            let t = Instant::now();
            let version = c.ping().await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            done(
                cli,
                out,
                json!({ "version": version, "rtt_ms": ms }),
                format!("pong from {}: protocol {version}, {ms:.2} ms", cli.server),
            )
        }
        Command::Request(r) => request(cli, r, c, out).await,
        _ => Err(Fail::Usage("not an online command".into())),
    }
}

fn done(cli: &Cli, out: &mut Out, v: Value, human: String) -> Res {
    if cli.json {
        out.json(&v)
    } else {
        out.line(human)
    }
}

fn settled(cli: &Cli, out: &mut Out, what: &str, n: u64, of: usize) -> Res {
    let human = if n as usize == of {
        format!("{what} {n}")
    } else {
        format!("{what} {n} of {of} (the others were not leased or waiting for redelivery in this group)")
    };
    done(cli, out, json!({ what: n }), human)
}

/// The payload from an argument, a file or stdin, decoded from base64 if asked.
fn payload(message: Option<&str>, m: &args::MessageArgs) -> Res<Bytes> {
    let raw = match (message, &m.file) {
        (Some(s), _) => s.as_bytes().to_vec(),
        (None, Some(p)) => std::fs::read(p).map_err(local(format!("reading {}", p.display())))?,
        (None, None) => {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b).map_err(local("reading stdin"))?;
            b
        }
    };
    if m.base64 {
        return decode_b64(&raw).map(Bytes::from);
    }
    Ok(Bytes::from(raw))
}

fn decode_b64(raw: &[u8]) -> Res<Vec<u8>> {
    B64.decode(raw.trim_ascii()).map_err(|e| Fail::Other(format!("the payload is not base64: {e}")))
}

fn message(payload: Bytes, m: &args::MessageArgs) -> Message {
    let mut msg = Message::new(payload);
    msg.event = m.event.clone();
    msg.key = m.key.clone();
    msg.ttl_ms = m.ttl;
    msg.headers.extend(m.headers.iter().cloned());
    msg
}

async fn publish(cli: &Cli, p: &args::Publish, c: &Client, out: &mut Out) -> Res {
    if let Some(topic) = &p.topic {
        if p.message.is_some() {
            return Err(Fail::Usage("with --topic, give only the message (the topic replaces QUEUE)".into()));
        }
        let mut m = message(payload(p.queue.as_deref(), &p.msg)?, &p.msg);
        m.msg_id = p.msg_id.clone();
        let routed = c.publish_topic(topic, m).await?;
        if cli.json {
            let list: Vec<Value> = routed
                .iter()
                .map(|r| json!({ "queue": r.queue, "offset": r.offset, "duplicate": r.duplicate }))
                .collect();
            return out.json(&json!({ "routed": list }));
        }
        if routed.is_empty() {
            eprintln!("gmq: no queue is bound to a pattern matching {topic}; nothing was stored");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = routed
            .iter()
            .map(|r| vec![r.queue.clone(), r.offset.to_string(), if r.duplicate { "yes" } else { "no" }.into()])
            .collect();
        return out.line(table(&["QUEUE", "OFFSET", "DUPLICATE"], &rows));
    }
    let Some(queue) = &p.queue else {
        return Err(Fail::Usage("publish needs a QUEUE (or --topic TOPIC)".into()));
    };
    if p.lines {
        if p.message.is_some() {
            return Err(Fail::Usage("--lines reads stdin or --file, not an argument".into()));
        }
        return publish_lines(cli, p, queue, c, out).await;
    }
    let mut m = message(payload(p.message.as_deref(), &p.msg)?, &p.msg);
    m.msg_id = p.msg_id.clone();
    let r = c.publish(queue, m).await?;
    let dup = if r.duplicate { " (duplicate: already stored, nothing stored now)" } else { "" };
    done(cli, out, json!({ "offset": r.offset, "duplicate": r.duplicate }), format!("offset {}{dup}", r.offset))
}

/// One message per line, in batches: a line waits for no more than what is
/// already readable, so a slow stream is published as it comes and a file in
/// large batches.
async fn publish_lines(cli: &Cli, p: &args::Publish, queue: &str, c: &Client, out: &mut Out) -> Res {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(p.batch.max(1) * 2);
    let file = p.msg.file.clone();
    // A thread reads: stdin and files block.
    std::thread::spawn(move || {
        let input: Box<dyn BufRead> = match file {
            Some(path) => match std::fs::File::open(&path) {
                Ok(f) => Box::new(std::io::BufReader::new(f)),
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))));
                    return;
                }
            },
            None => Box::new(std::io::stdin().lock()),
        };
        for line in input.split(b'\n') {
            let line = line.map(|mut l| {
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                l
            });
            let stop = line.is_err();
            if tx.blocking_send(line).is_err() || stop {
                return;
            }
        }
    });
    let (mut count, mut first, mut last) = (0u64, None, None);
    while let Some(line) = rx.recv().await {
        // At most --batch lines and about 4 MiB of payload per request, far
        // below the server's default frame limit (16 MiB, base64 included).
        let mut bytes = line.as_ref().map_or(0, Vec::len);
        let mut batch = vec![line];
        while batch.len() < p.batch.max(1) && bytes < 4 << 20 {
            match rx.try_recv() {
                Ok(l) => {
                    bytes += l.as_ref().map_or(0, Vec::len);
                    batch.push(l);
                }
                Err(_) => break,
            }
        }
        let mut msgs = Vec::with_capacity(batch.len());
        let published = |e: Fail| {
            eprintln!("gmq: {count} messages were published before this line");
            e
        };
        for (i, l) in batch.into_iter().enumerate() {
            let l = l.map_err(local("reading input")).map_err(published)?;
            let payload = if p.msg.base64 {
                decode_b64(&l).map_err(|e| published(Fail::Other(format!("line {}: {e}", count + i as u64 + 1))))?
            } else {
                l
            };
            msgs.push(message(Bytes::from(payload), &p.msg));
        }
        let offsets = c.publish_batch(queue, &msgs).await.map_err(|e| {
            if count > 0 {
                eprintln!("gmq: {count} messages were published before this failure");
            }
            Fail::from(e)
        })?;
        count += offsets.len() as u64;
        first = first.or(offsets.first().copied());
        last = offsets.last().copied().or(last);
    }
    let range = match (first, last) {
        (Some(a), Some(b)) => format!(" (offsets {a}..={b})"),
        _ => String::new(),
    };
    done(
        cli,
        out,
        json!({ "published": count, "first_offset": first, "last_offset": last }),
        format!("published {count} messages to {queue}{range}"),
    )
}

/// A delivery as one JSON line.
fn delivery_json(queue: &str, d: &Delivery) -> Value {
    let mut v = Map::new();
    v.insert("queue".into(), json!(queue));
    v.insert("offset".into(), json!(d.offset));
    v.insert("payload".into(), json!(B64.encode(&d.payload)));
    if let Some(e) = &d.event {
        v.insert("event".into(), json!(e));
    }
    if let Some(k) = &d.key {
        v.insert("key".into(), json!(k));
    }
    if !d.headers.is_empty() {
        v.insert("headers".into(), json!(d.headers));
    }
    if let Some(m) = &d.msg_id {
        v.insert("msg_id".into(), json!(m));
    }
    v.insert("timestamp_ms".into(), json!(d.timestamp_ms));
    v.insert("deliveries".into(), json!(d.deliveries));
    Value::Object(v)
}

fn print_delivery(cli: &Cli, out: &mut Out, queue: &str, d: &Delivery) -> Res {
    if cli.json {
        out.json(&delivery_json(queue, d))
    } else {
        out.bytes(&d.payload)?;
        out.bytes(b"\n")
    }
}

async fn consume(cli: &Cli, a: &args::Consume, c: &Client, out: &mut Out) -> Res {
    let mut o = if a.manual_ack { ConsumeOptions::manual(1) } else { ConsumeOptions::auto(1) };
    o = o.group(&a.group);
    if !a.events.is_empty() {
        o = o.events(a.events.iter().cloned());
    }
    o.from = a.from;
    if a.follow {
        return follow(cli, a, o, c, out).await;
    }
    // The server serves at most its max_batch per request: ask again until
    // --max messages came or the queue has none left.
    let mut left = a.max.unwrap_or(1).max(1);
    o.wait_ms = a.wait;
    while left > 0 {
        o.max = left;
        let got = c.consume(&a.queue, &o).await?;
        if got.is_empty() {
            break;
        }
        for d in &got {
            print_delivery(cli, out, &a.queue, d)?;
        }
        // Acked only once written: a message that never reached the reader
        // is delivered again (the lease returns when this connection closes).
        out.flush()?;
        if a.manual_ack {
            let offsets: Vec<u64> = got.iter().map(|d| d.offset).collect();
            c.ack(&a.queue, &a.group, &offsets).await?;
        }
        left = left.saturating_sub(got.len() as u64);
        // Only the first request waits for a message.
        o.wait_ms = 0;
    }
    Ok(())
}

async fn follow(cli: &Cli, a: &args::Consume, mut o: ConsumeOptions, c: &Client, out: &mut Out) -> Res {
    let limit = a.max.unwrap_or(u64::MAX);
    // No more in flight than will be printed: with auto ack, what the server
    // sent is done.
    o.max = a.prefetch.max(1).min(limit.max(1));
    let mut sub = c.subscribe(&a.queue, &o).await?;
    let mut printed = 0u64;
    let mut unacked: Vec<u64> = Vec::new();
    let mut acks = tokio::task::JoinSet::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let ack_now = |offsets: &mut Vec<u64>, acks: &mut tokio::task::JoinSet<Result<u64, gmq_client::Error>>| {
        if !offsets.is_empty() {
            let (c, q, g, o) = (c.clone(), a.queue.clone(), a.group.clone(), std::mem::take(offsets));
            acks.spawn(async move { c.ack(&q, &g, &o).await });
        }
    };
    let result: Res = loop {
        if printed >= limit {
            break Ok(());
        }
        tokio::select! {
            biased;
            _ = &mut ctrl_c => break Ok(()),
            d = sub.next() => match d {
                None => break Err(Fail::Connection("the server ended the subscription".into())),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(d)) => {
                    if let Err(e) = print_delivery(cli, out, &a.queue, &d).and_then(|()| out.flush()) {
                        break Err(e);
                    }
                    printed += 1;
                    if a.manual_ack {
                        unacked.push(d.offset);
                        if unacked.len() as u64 >= o.max.div_ceil(2) {
                            ack_now(&mut unacked, &mut acks);
                        }
                    }
                }
            },
            Some(r) = acks.join_next() => {
                if let Err(e) = r.map_err(|e| Fail::Other(e.to_string())).and_then(|r| r.map_err(Fail::from)) {
                    break Err(e);
                }
            }
            // Nothing else is ready: ack what has been printed.
            () = std::future::ready(()), if !unacked.is_empty() => ack_now(&mut unacked, &mut acks),
        }
    };
    // Everything printed is acked before leaving; the rest goes back.
    ack_now(&mut unacked, &mut acks);
    while let Some(r) = acks.join_next().await {
        r.map_err(|e| Fail::Other(e.to_string()))??;
    }
    let _ = sub.unsubscribe().await;
    result
}

async fn queues(cli: &Cli, c: &Client, out: &mut Out) -> Res {
    let v = c.request(json!({"op": "queues"})).await?;
    let list = v.get("queues").and_then(Value::as_array).cloned().unwrap_or_default();
    if cli.json {
        return out.json(&json!({ "queues": list }));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|q| {
            let groups: Vec<&str> =
                q["groups"].as_array().map(|g| g.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            vec![
                str_of(&q["name"]),
                str_of(&q["depth"]),
                human_bytes(q["bytes"].as_u64().unwrap_or(0)),
                str_of(&q["consumers"]),
                if groups.is_empty() { "-".into() } else { groups.join(",") },
                match (q.get("quarantined"), q.get("stopped")) {
                    (Some(r), _) => format!("QUARANTINED: {}", str_of(r)),
                    (None, Some(r)) => format!("STOPPED: {}", str_of(r)),
                    (None, None) => "ok".into(),
                },
            ]
        })
        .collect();
    out.line(table(&["QUEUE", "DEPTH", "BYTES", "CONSUMERS", "GROUPS", "STATUS"], &rows))
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

async fn stats(cli: &Cli, queue: &str, c: &Client, out: &mut Out) -> Res {
    let mut v = c.request(json!({"op": "stats", "queue": queue})).await?;
    if let Some(m) = v.as_object_mut() {
        m.remove("ok");
        m.remove("id");
    }
    if cli.json {
        return out.json(&v);
    }
    let n = |k: &str| str_of(&v[k]);
    let mut s = String::new();
    s.push_str(&table(
        &["queue", &n("queue")],
        &[
            vec!["depth".into(), n("depth")],
            vec!["bytes".into(), human_bytes(v["bytes"].as_u64().unwrap_or(0))],
            vec!["offsets".into(), format!("first {}, next {}", n("first_offset"), n("next_offset"))],
            vec!["segments".into(), n("segments")],
            vec!["published".into(), n("published")],
            vec!["rates".into(), format!("publish {}/s, deliver {}/s", n("publish_rate"), n("deliver_rate"))],
            vec!["consumers".into(), n("consumers")],
        ],
    ));
    let groups = v["groups"].as_array().cloned().unwrap_or_default();
    if !groups.is_empty() {
        let cols = [
            "name",
            "position",
            "cursor",
            "depth",
            "pending",
            "waiting_retry",
            "consumers",
            "delivered",
            "redelivered",
            "acked",
            "dead_lettered",
            "expired",
        ];
        let rows: Vec<Vec<String>> = groups.iter().map(|g| cols.iter().map(|c| str_of(&g[*c])).collect()).collect();
        let heads: Vec<String> = cols.iter().map(|c| c.to_uppercase().replace("NAME", "GROUP")).collect();
        let heads: Vec<&str> = heads.iter().map(String::as_str).collect();
        s.push_str("\n\n");
        s.push_str(&table(&heads, &rows));
    }
    let clients = v["clients"].as_array().cloned().unwrap_or_default();
    if !clients.is_empty() {
        let cols = ["conn", "peer", "user", "group", "kind", "sub", "connected_s"];
        let rows: Vec<Vec<String>> = clients.iter().map(|g| cols.iter().map(|c| str_of(&g[*c])).collect()).collect();
        let heads: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
        let heads: Vec<&str> = heads.iter().map(String::as_str).collect();
        s.push_str("\n\n");
        s.push_str(&table(&heads, &rows));
    }
    if let Some(settings) = v["settings"].as_object() {
        let rows: Vec<Vec<String>> = settings.iter().map(|(k, v)| vec![k.clone(), str_of(v)]).collect();
        s.push_str("\n\n");
        s.push_str(&table(&["SETTING", "VALUE"], &rows));
    }
    out.line(s)
}

fn create_settings(a: &args::Create) -> Res<Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    put("fsync", a.fsync.clone());
    put("segment_bytes", a.segment_bytes.map(Value::from));
    put("max_length", a.max_length.map(Value::from));
    put("max_bytes", a.max_bytes.map(Value::from));
    put("overflow", a.overflow.as_ref().map(|o| json!(o.replace('-', "_"))));
    put("message_ttl_ms", a.message_ttl.map(Value::from));
    put("ack_timeout_ms", a.ack_timeout.map(Value::from));
    put("max_deliveries", a.max_deliveries.map(Value::from));
    put("dead_letter", a.dead_letter.clone().map(Value::from));
    put("dead_letter_expired", a.dead_letter_expired.map(Value::from));
    put("dedup_window_ms", a.dedup_window.map(Value::from));
    put("dedup_max_ids", a.dedup_max_ids.map(Value::from));
    put("from", a.from.map(gmq_client::start_json));
    let stream_limits = a.retention_max_age.is_some() || a.retention_max_bytes.is_some();
    match a.retention.as_deref() {
        Some("acked") if stream_limits => {
            return Err(Fail::Usage("--retention-max-age and --retention-max-bytes need --retention stream".into()))
        }
        Some("acked") => put("retention", Some(json!("acked"))),
        Some(_) | None if stream_limits || a.retention.is_some() => {
            let mut r = Map::new();
            if let Some(age) = a.retention_max_age {
                r.insert("max_age_ms".into(), json!(age));
            }
            if let Some(b) = a.retention_max_bytes {
                r.insert("max_bytes".into(), json!(b));
            }
            put("retention", Some(Value::Object(r)));
        }
        _ => {}
    }
    Ok(Value::Object(m))
}

/// A random 64-bit hex tag (names the reply queue and correlates the answer).
fn tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

async fn request(cli: &Cli, r: &args::Request, c: &Client, out: &mut Out) -> Res {
    let reply_to = format!("gmq.reply.{}", tag());
    let correlation = tag();
    // Answers to one CLI process need not survive a crash of the server.
    c.create(&reply_to, json!({"fsync": "never"})).await?;
    let result = async {
        let m = message(payload(r.message.as_deref(), &r.msg)?, &r.msg)
            .header("reply_to", &reply_to)
            .header("correlation_id", &correlation);
        c.publish(&r.queue, m).await?;
        let deadline = Instant::now() + Duration::from_millis(r.wait);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Fail::NoReply(format!("no reply on {reply_to} within {} ms", r.wait)));
            }
            let o = ConsumeOptions::auto(16).wait_ms(left.as_millis().max(1) as u64);
            for d in c.consume(&reply_to, &o).await? {
                if d.headers.get("correlation_id") == Some(&correlation) {
                    return print_delivery(cli, out, &reply_to, &d);
                }
                eprintln!("gmq: ignoring a message on {reply_to} without our correlation_id");
            }
        }
    }
    .await;
    if let Err(e) = c.delete(&reply_to).await {
        eprintln!("gmq: could not delete the reply queue {reply_to}: {}", Fail::from(e));
    }
    result
}

/// GMQ's one-line usage: the request goes out in GMQ's own shape and the
/// server's GMQ reply is printed as it came.
pub fn legacy(cli: &Cli, queue: &str, action: &str, message: Option<&str>) -> Res {
    let mut req = json!({ "operation": action, "queue": queue });
    match (action, message) {
        ("P", None) => return Err(Fail::Usage("-a P needs -m BASE64".into())),
        ("P", Some(m)) => req["payload"] = json!(m),
        (_, Some(_)) => return Err(Fail::Usage(format!("-m is only for -a P, not -a {action}"))),
        (_, None) => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail::Other(format!("starting the runtime: {e}")))?;
    let t = Duration::from_millis(cli.timeout_ms.max(1));
    let reply = rt.block_on(async {
        let talk = async {
            let mut s = tokio::net::TcpStream::connect(&cli.server).await?;
            let mut lines = String::new();
            if let Some(user) = &cli.user {
                let password = cli.password.as_deref().unwrap_or_default();
                lines.push_str(&format!("{}\n", json!({"op": "auth", "user": user, "password": password})));
            }
            lines.push_str(&format!("{req}\n"));
            s.write_all(lines.as_bytes()).await?;
            // The server answers and closes.
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        match tokio::time::timeout(t, talk).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Fail::Connection(format!("{}: {e}", cli.server))),
            Err(_) => Err(Fail::Connection(format!("{}: no answer within {} ms", cli.server, t.as_millis()))),
        }
    })?;
    let text = String::from_utf8_lossy(&reply);
    let mut lines = text.lines();
    if cli.user.is_some() {
        let auth: Value = serde_json::from_str(lines.next().unwrap_or_default()).unwrap_or(Value::Null);
        if auth.get("ok") != Some(&json!(true)) {
            return Err(server_error(&auth["error"]));
        }
    }
    let line = lines.next().unwrap_or_default();
    let mut out = Out::new();
    out.line(line)?;
    out.flush()?;
    let v: Value = serde_json::from_str(line)
        .map_err(|_| Fail::Connection(format!("unexpected answer from the server: {line}")))?;
    if v.get("confirmation").and_then(Value::as_str) == Some("Y") {
        return Ok(());
    }
    Err(server_error(&v["error"]))
}

/// An error as a reply carries it: `{"code":..,"message":..}`, or GMQ's
/// `"<code>: <message>"`.
fn server_error(e: &Value) -> Fail {
    let (code, message) = match e {
        Value::String(s) => s.split_once(": ").unwrap_or(("", s)),
        e => (
            e.get("code").and_then(Value::as_str).unwrap_or_default(),
            e.get("message").and_then(Value::as_str).unwrap_or_default(),
        ),
    };
    match gmq_client::ErrorCode::parse(code) {
        Some(code) => Fail::Server(code, message.to_owned()),
        None => Fail::Connection(format!("unexpected answer from the server: {e}")),
    }
}
