//! The `apiary` binary.

use clap::Parser;

/// Large freed blocks (training activations, update and checkpoint buffers) are kept for reuse
/// instead of being returned to the kernel and faulted back in (see apiary-alloc).
#[global_allocator]
static ALLOC: apiary_alloc::CachingAlloc = apiary_alloc::CachingAlloc::new();

fn main() -> std::process::ExitCode {
    apiary_alloc::register(&ALLOC);
    let cli = apiary_daemon::cli::Cli::parse();
    // libp2p's Kademlia warns "Failed to trigger bootstrap: No known peers" whenever a listen
    // address comes up before any peer is connected, i.e. at every start: expected, and nothing
    // an operator can act on, so its warnings are not shown unless asked for by name.
    let directives = if cli.log.contains("libp2p_kad") {
        cli.log.clone()
    } else {
        format!("{},libp2p_kad=error", cli.log)
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        apiary_daemon::cli::LogFormat::Text => logs.init(),
        apiary_daemon::cli::LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(apiary_daemon::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
