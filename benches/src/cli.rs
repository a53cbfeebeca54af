//! Command-line options more than one benchmark takes, so that they mean
//! the same everywhere.

/// How a benchmark waits for, and judges, a quiet machine.
#[derive(Debug, Clone, clap::Args)]
pub struct Quiet {
    /// Before each run, wait up to this many seconds for other processes to
    /// use at most `--max-others-cpu` CPUs.
    #[arg(long, default_value_t = 60.0)]
    pub quiet_wait: f64,
    /// A measurement during which other processes kept more than this many
    /// CPUs busy on average counts as disturbed (the report says what the
    /// benchmark does then).
    #[arg(long, default_value_t = 0.5)]
    pub max_others_cpu: f64,
}

/// The fixed-rate end-to-end workload.
#[derive(Debug, Clone, clap::Args)]
pub struct EndToEnd {
    /// End to end: messages per second, on a fixed schedule.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// End to end: seconds measured, after `--e2e-warmup`.
    #[arg(long, default_value_t = 5.0)]
    pub e2e_duration: f64,
    /// End to end: seconds run before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub e2e_warmup: f64,
    /// End to end: the subscriber's prefetch (manual ack).
    #[arg(long, default_value_t = 64)]
    pub e2e_prefetch: usize,
}
