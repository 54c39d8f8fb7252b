//! Entry point: config, tracing, metrics, then the servers until SIGTERM/SIGINT.
//! `--print-settings` prints every variable read, its default and what it accepts (JSON) instead.

use std::process::ExitCode;
use std::time::Duration;

use visiontrack_ingestor::config::LogFormat;
use visiontrack_ingestor::{metrics, server, Config};

// glibc malloc was a fifth of the CPU profile under load; mimalloc is much cheaper
// for the many small short-lived allocations of a request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--print-settings") {
        println!("{}", serde_json::to_string_pretty(&Config::settings()).expect("settings as JSON"));
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("visiontrack-ingestor: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);

    let handle = metrics::install();
    // Upkeep folds the recorded histogram samples into buckets: a few ms of CPU
    // at full rate, kept off the request threads.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .expect("spawn the metrics upkeep thread");

    server::run(&config, &handle)
}

fn init_tracing(config: &Config) {
    let level: tracing::Level = config.log_level.parse().unwrap_or(tracing::Level::INFO);
    // Colours only for a person at a terminal, never into log files or collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_max_level(level).with_target(false).with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
