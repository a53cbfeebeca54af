//! The command line: every command, flag and example `gmq --help` shows.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const TOP_EXAMPLES: &str = "\
Examples:
  gmq publish jobs 'hello'                      publish one message
  gmq consume jobs --max 10 --json              take up to ten messages as JSON lines
  gmq consume jobs --follow --manual-ack        stream, acking each message once printed
  gmq queues                                    list queues
  gmq verify --data-dir /var/lib/gmq            check every byte of a stopped server's data
  gmq -s host:4567 -q jobs -a P -m aGVsbG8=     GMQ's one-line usage (P, S or L)

Exit codes:
  0 success (a broken pipe on stdout counts as success)
  1 any other failure (a local file, bad input data)
  2 usage error
  3 the server refused the request (the error code is printed)
  4 the server could not be reached, or the connection was lost or timed out
  5 damage found (verify, or what repair could not fix, or records export could not read)
  6 the data directory is held by a running server
  7 request: no reply before --timeout";

/// GMQ's command line.
#[derive(Debug, Parser)]
#[command(
    name = "gmq",
    version,
    about = "Talk to a GMQ server, and inspect, verify, repair and compact its data offline"
)]
#[command(after_help = TOP_EXAMPLES)]
pub struct Cli {
    /// Server address (online commands).
    #[arg(short = 's', long = "server", global = true, env = "GMQ_SERVER", default_value = "127.0.0.1:4567")]
    pub server: String,
    /// User to authenticate as (online commands).
    #[arg(long, global = true, env = "GMQ_USER")]
    pub user: Option<String>,
    /// Password for --user.
    #[arg(long, global = true, env = "GMQ_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Give up connecting, or waiting for a reply, after this many milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Machine-readable output: JSON (one document, or JSON lines for streams).
    #[arg(long, global = true)]
    pub json: bool,
    /// GMQ one-line usage: the queue.
    #[arg(short = 'q', value_name = "QUEUE", requires = "action")]
    pub queue: Option<String>,
    /// GMQ one-line usage: P (publish), S (take one message) or L (length).
    #[arg(short = 'a', value_name = "P|S|L", requires = "queue", value_parser = ["P", "S", "L"])]
    pub action: Option<String>,
    /// GMQ one-line usage: the payload of P, in base64.
    #[arg(short = 'm', value_name = "BASE64", requires = "action")]
    pub message: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish a message (from an argument, a file or stdin) to a queue or a topic.
    #[command(after_help = "\
Examples:
  gmq publish jobs 'hello'                          the argument is the payload
  gmq publish jobs --file report.pdf                a file's bytes
  echo -n aGVsbG8= | gmq publish jobs --base64      stdin, decoded from base64
  gmq publish jobs --lines < events.txt             one message per line (batched)
  gmq publish jobs x --event created --key order-17 --header trace=t-1 --ttl 60000 --msg-id order-17-v1
  gmq publish --topic orders.eu.created 'hello'     routed to every bound queue")]
    Publish(Publish),
    /// Take messages from a queue, or stream them with --follow.
    #[command(after_help = "\
Payloads are printed raw, each followed by a newline; --json prints one JSON
line per message (payload in base64, offset, event, key, headers, ...).
With auto ack (the default) a message is done once the server sends it: one
the CLI cannot print (a closed pipe, Ctrl-C, a kill) is lost for the group.
With --manual-ack, each message is acked only after it has been written to
stdout: one the CLI could not write is delivered again (at least once).

Examples:
  gmq consume jobs                                  one message, auto ack
  gmq consume jobs --max 100 --wait 5000 --json     up to 100, waiting up to 5 s for the first
  gmq consume jobs --group audit --from latest      a group that starts at new messages
  gmq consume jobs --follow --manual-ack | ./worker stream until Ctrl-C or a closed pipe
  gmq consume jobs --follow --max 10                stop after ten messages")]
    Consume(Consume),
    /// Acknowledge messages by offset (they are done for the group).
    #[command(after_help = "\
Acks a message that is leased (delivered, not yet acked) or waiting to be
delivered again. Example:
  gmq ack jobs 17 18 --group workers")]
    Ack(Ack),
    /// Give leased messages back for redelivery, optionally after a delay.
    #[command(after_help = "Example:\n  gmq nack jobs 17 --group workers --delay 5000")]
    Nack(Nack),
    /// List the queues: depth, bytes, groups, consumers.
    #[command(after_help = "Example:\n  gmq queues --json")]
    Queues,
    /// A queue's statistics, groups, clients and settings.
    #[command(after_help = "Example:\n  gmq stats jobs")]
    Stats(QueueArg),
    /// Create a queue with settings (settings left out take the server's defaults).
    #[command(after_help = "\
Creating a queue that exists succeeds when the given settings match, and is a
`conflict` (exit 3) when one differs.

Examples:
  gmq create jobs --ack-timeout 60000 --max-deliveries 5 --dead-letter jobs.failed
  gmq create events --retention stream --retention-max-age 604800000 --fsync interval:100
  gmq create cache --max-length 1000 --overflow drop-oldest --fsync never")]
    Create(Create),
    /// Delete a queue and all its messages.
    #[command(after_help = "Example:\n  gmq delete jobs")]
    Delete(QueueArg),
    /// Drop every stored message of a queue, for every group.
    #[command(after_help = "Example:\n  gmq purge jobs")]
    Purge(QueueArg),
    /// Route messages published to topics matching PATTERN into QUEUE.
    #[command(after_help = "\
A topic is words separated by dots; in a pattern `*` matches one word and `#`
any number. Example:
  gmq bind eu-orders 'orders.eu.*'")]
    Bind(Binding),
    /// Remove a binding.
    #[command(after_help = "Example:\n  gmq unbind eu-orders 'orders.eu.*'")]
    Unbind(Binding),
    /// Check that the server answers, and how fast.
    #[command(after_help = "Example:\n  gmq -s 10.0.0.5:4567 ping")]
    Ping,
    /// Request-reply: publish with `reply_to` and `correlation_id` headers, print the answer.
    #[command(after_help = "\
The request goes to QUEUE with two headers: `reply_to`, a temporary queue made
for this request (deleted afterwards), and `correlation_id`. A responder
publishes its answer to the `reply_to` queue with the same `correlation_id`
header; the first such answer is printed like `consume` prints a message.

Examples:
  gmq request prices '{\"sku\":17}' --timeout 2000
  gmq request prices --file query.json --json")]
    Request(Request),
    /// Describe a data directory offline: queues, segments, records, groups.
    #[command(after_help = "\
Read-only: it may run while a server holds the directory (what it shows may
then be changing). With --records, every record is a JSON line with its
segment, byte position, offset, timestamp, event, key, headers, checksum
status and payload (base64); damaged byte ranges are lines with \"crc\":\"bad\".

Examples:
  gmq inspect --data-dir /var/lib/gmq
  gmq inspect --data-dir /var/lib/gmq jobs --records | head")]
    Inspect(Inspect),
    /// Check every checksum, index and group state of a data directory (read-only).
    #[command(after_help = "\
Exits 0 when everything checks out and 5 when anything is damaged, naming the
file and byte offset of each problem.

Example:
  gmq verify --data-dir /var/lib/gmq")]
    Verify(Offline),
    /// Make a damaged data directory open cleanly, keeping every valid record.
    #[command(after_help = "\
Rewrites damaged segments with their valid records, removes indexes and
checkpoints that do not check out (they are rebuilt), keeps the valid prefix
of a damaged group state log, and removes leftovers. --dry-run prints exactly
what it would do and writes nothing. Refuses to run while a server holds the
directory (except --dry-run). Exits 5 if damage remains afterwards.

Examples:
  gmq repair --data-dir /var/lib/gmq --dry-run
  gmq repair --data-dir /var/lib/gmq jobs")]
    Repair(Repair),
    /// Reclaim the space of acked and expired records in sealed segments.
    #[command(after_help = "\
Opens the directory as the server would (recovery included), rewrites sealed
segments whose live records are less than --threshold of their bytes (live
records keep their offsets), and deletes segments every group is done with.
Refuses to run while a server holds the directory.

Examples:
  gmq compact --data-dir /var/lib/gmq --dry-run
  gmq compact --data-dir /var/lib/gmq jobs --threshold 0.8")]
    Compact(Compact),
    /// Write a queue's stored records as JSON lines (a backup, or to move a queue).
    #[command(after_help = "\
The first line names the queue and carries its settings; each further line is
one record: offset, timestamp_ms, payload (base64), and event, key, headers,
ttl_ms, msg_id when set. Read-only: it may run while a server holds the
directory. Records already acked but not yet deleted are included.

Example:
  gmq export --data-dir /var/lib/gmq jobs > jobs.jsonl")]
    Export(Export),
    /// Append records from an export (JSON lines) to a queue.
    #[command(after_help = "\
Creates the queue with the export's settings if it does not exist. Records get
new offsets and timestamps; a record's ttl_ms is shortened by the time since it
was stored, and records already expired are skipped. A msg_id seen again
within the dedup window is stored once. Refuses to run while a server holds
the directory.

Examples:
  gmq import --data-dir /var/lib/gmq jobs < jobs.jsonl
  gmq import --data-dir /srv/new jobs --input jobs.jsonl")]
    Import(Import),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  gmq completions bash > /etc/bash_completion.d/gmq")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A queue name.
#[derive(Debug, Args)]
pub struct QueueArg {
    /// The queue.
    pub queue: String,
}

/// `bind` and `unbind`.
#[derive(Debug, Args)]
pub struct Binding {
    /// The queue.
    pub queue: String,
    /// The topic pattern.
    pub pattern: String,
}

/// Fields of a message to publish.
#[derive(Debug, Args)]
pub struct MessageArgs {
    /// Read the payload from this file.
    #[arg(short = 'f', long, value_name = "PATH", conflicts_with = "message")]
    pub file: Option<PathBuf>,
    /// The payload given is base64: decode it first.
    #[arg(long)]
    pub base64: bool,
    /// Event name.
    #[arg(long)]
    pub event: Option<String>,
    /// Key.
    #[arg(long)]
    pub key: Option<String>,
    /// A header, as NAME=VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Time to live in milliseconds.
    #[arg(long, value_name = "MS")]
    pub ttl: Option<u64>,
}

/// `publish`.
#[derive(Debug, Args)]
pub struct Publish {
    /// The queue (with --topic: the message).
    #[arg(value_name = "QUEUE")]
    pub queue: Option<String>,
    /// The payload; read from stdin when absent (and no --file).
    pub message: Option<String>,
    #[command(flatten)]
    pub msg: MessageArgs,
    /// Dedup id: a retry with the same id stores nothing twice.
    #[arg(long, value_name = "ID", conflicts_with = "lines")]
    pub msg_id: Option<String>,
    /// Publish to a topic instead of a queue.
    #[arg(long, value_name = "TOPIC", conflicts_with = "lines")]
    pub topic: Option<String>,
    /// One message per line of stdin (or --file), sent in batches.
    #[arg(long)]
    pub lines: bool,
    /// With --lines: most messages per publish request.
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "lines")]
    pub batch: usize,
}

/// `consume`.
#[derive(Debug, Args)]
pub struct Consume {
    /// The queue.
    pub queue: String,
    /// Consumer group.
    #[arg(long, short = 'g', default_value = "default")]
    pub group: String,
    /// Most messages to take (default 1); with --follow, stop after this many.
    #[arg(long, short = 'n', value_name = "N")]
    pub max: Option<u64>,
    /// Wait up to this long for a message when the queue is empty.
    #[arg(long, value_name = "MS", default_value_t = 0, conflicts_with = "follow")]
    pub wait: u64,
    /// Lease messages and ack each one once it is written to stdout.
    #[arg(long)]
    pub manual_ack: bool,
    /// Stream messages as they come (a subscription) until Ctrl-C or --max.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: messages the server may send ahead of what is printed.
    #[arg(long, value_name = "N", default_value_t = 64, requires = "follow")]
    pub prefetch: u64,
    /// Only messages with this event (repeatable).
    #[arg(long = "event", value_name = "NAME")]
    pub events: Vec<String>,
    /// Where the group starts if this creates it: oldest, latest, an offset, or time:MS.
    #[arg(long, value_name = "WHERE", value_parser = parse_start)]
    pub from: Option<gmq_protocol::Start>,
}

/// `ack`.
#[derive(Debug, Args)]
pub struct Ack {
    /// The queue.
    pub queue: String,
    /// Offsets.
    #[arg(required = true)]
    pub offsets: Vec<u64>,
    /// Consumer group.
    #[arg(long, short = 'g', default_value = "default")]
    pub group: String,
}

/// `nack`.
#[derive(Debug, Args)]
pub struct Nack {
    /// The queue.
    pub queue: String,
    /// Offsets.
    #[arg(required = true)]
    pub offsets: Vec<u64>,
    /// Consumer group.
    #[arg(long, short = 'g', default_value = "default")]
    pub group: String,
    /// Deliver again no sooner than this.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub delay: u64,
}

/// `create`: every queue setting.
#[derive(Debug, Args)]
pub struct Create {
    /// The queue.
    pub queue: String,
    /// always, never, or interval:MS.
    #[arg(long, value_name = "POLICY", value_parser = parse_fsync)]
    pub fsync: Option<serde_json::Value>,
    /// Segment size in bytes (at least 4096).
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: Option<u64>,
    /// Most messages not yet done.
    #[arg(long, value_name = "N")]
    pub max_length: Option<u64>,
    /// Most bytes of messages not yet done.
    #[arg(long, value_name = "BYTES")]
    pub max_bytes: Option<u64>,
    /// Past a limit: reject (queue_full) or drop-oldest.
    #[arg(long, value_name = "WHAT", value_parser = ["reject", "drop-oldest", "drop_oldest"])]
    pub overflow: Option<String>,
    /// Messages older than this are never delivered.
    #[arg(long, value_name = "MS")]
    pub message_ttl: Option<u64>,
    /// How long a manual-ack lease lasts.
    #[arg(long, value_name = "MS")]
    pub ack_timeout: Option<u64>,
    /// Deliveries after which an unacked message goes to the dead-letter queue (0: no limit).
    #[arg(long, value_name = "N")]
    pub max_deliveries: Option<u32>,
    /// The dead-letter queue (default QUEUE.dlq).
    #[arg(long, value_name = "QUEUE")]
    pub dead_letter: Option<String>,
    /// Expired messages go to the dead-letter queue instead of being dropped.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub dead_letter_expired: Option<bool>,
    /// acked (delete once every group acked) or stream (keep by age and size).
    #[arg(long, value_name = "KIND", value_parser = ["acked", "stream"])]
    pub retention: Option<String>,
    /// Stream retention: delete segments whose newest record is older than this.
    #[arg(long, value_name = "MS")]
    pub retention_max_age: Option<u64>,
    /// Stream retention: delete the oldest segments while the queue holds more.
    #[arg(long, value_name = "BYTES")]
    pub retention_max_bytes: Option<u64>,
    /// A repeated msg_id within this window is a duplicate.
    #[arg(long, value_name = "MS")]
    pub dedup_window: Option<u64>,
    /// Most msg_ids remembered.
    #[arg(long, value_name = "N")]
    pub dedup_max_ids: Option<u64>,
    /// Where new groups start: oldest, latest, an offset, or time:MS.
    #[arg(long, value_name = "WHERE", value_parser = parse_start)]
    pub from: Option<gmq_protocol::Start>,
}

/// `request`.
#[derive(Debug, Args)]
pub struct Request {
    /// The queue the responder consumes.
    pub queue: String,
    /// The payload; read from stdin when absent (and no --file).
    pub message: Option<String>,
    #[command(flatten)]
    pub msg: MessageArgs,
    /// Wait this long for the answer.
    #[arg(long = "timeout", value_name = "MS", default_value_t = 5000)]
    pub wait: u64,
}

/// What every offline command takes.
#[derive(Debug, Args)]
pub struct Offline {
    /// The data directory.
    #[arg(long, short = 'd', value_name = "DIR", default_value = "./gmq-data")]
    pub data_dir: PathBuf,
    /// Only this queue.
    pub queue: Option<String>,
}

/// `inspect`.
#[derive(Debug, Args)]
pub struct Inspect {
    #[command(flatten)]
    pub at: Offline,
    /// Dump every record as a JSON line.
    #[arg(long)]
    pub records: bool,
}

/// `repair`.
#[derive(Debug, Args)]
pub struct Repair {
    #[command(flatten)]
    pub at: Offline,
    /// Print what would be done; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `compact`.
#[derive(Debug, Args)]
pub struct Compact {
    #[command(flatten)]
    pub at: Offline,
    /// Report what would be reclaimed; rewrite nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rewrite a sealed segment when its live records are less than this share of its bytes.
    #[arg(long, value_name = "SHARE", default_value_t = 0.5)]
    pub threshold: f64,
}

/// `export`.
#[derive(Debug, Args)]
pub struct Export {
    /// The data directory.
    #[arg(long, short = 'd', value_name = "DIR", default_value = "./gmq-data")]
    pub data_dir: PathBuf,
    /// The queue.
    pub queue: String,
    /// Write here instead of stdout.
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// `import`.
#[derive(Debug, Args)]
pub struct Import {
    /// The data directory.
    #[arg(long, short = 'd', value_name = "DIR", default_value = "./gmq-data")]
    pub data_dir: PathBuf,
    /// The queue (may differ from the exported one).
    pub queue: String,
    /// Read here instead of stdin.
    #[arg(long, short = 'i', value_name = "PATH")]
    pub input: Option<PathBuf>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// `oldest`, `latest`, an offset, or `time:MS`.
pub fn parse_start(s: &str) -> Result<gmq_protocol::Start, String> {
    use gmq_protocol::Start;
    match s {
        "oldest" => Ok(Start::Oldest),
        "latest" => Ok(Start::Latest),
        _ => {
            if let Some(t) = s.strip_prefix("time:") {
                return t.parse().map(Start::Time).map_err(|_| format!("time:MS needs a number, got {t:?}"));
            }
            s.parse()
                .map(Start::Offset)
                .map_err(|_| format!("expected oldest, latest, an offset or time:MS, got {s:?}"))
        }
    }
}

fn parse_fsync(s: &str) -> Result<serde_json::Value, String> {
    match s {
        "always" | "never" => Ok(serde_json::json!(s)),
        _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) => Ok(serde_json::json!({ "interval_ms": ms })),
            _ => Err(format!("expected always, never or interval:MS, got {s:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn values_parse_or_say_what_was_expected() {
        use gmq_protocol::Start;
        assert_eq!(parse_start("latest"), Ok(Start::Latest));
        assert_eq!(parse_start("17"), Ok(Start::Offset(17)));
        assert_eq!(parse_start("time:5"), Ok(Start::Time(5)));
        assert!(parse_start("soon").unwrap_err().contains("soon"));
        assert_eq!(parse_fsync("interval:100"), Ok(serde_json::json!({"interval_ms": 100})));
        assert!(parse_fsync("sometimes").is_err());
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_header("=x").is_err());
    }
}
