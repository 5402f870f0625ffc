//! `opi-echo-ceiling`: the manager's transport with nothing behind it, as a benchmark
//! baseline. See `opi_tests::sim::echo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Serves the Agent service over the manager's TLS setup, counting heartbeats only; writes
/// its addresses to RUN_DIR/listen-addr and RUN_DIR/metrics-addr.
#[derive(Debug, Parser)]
#[command(name = "opi-echo-ceiling", version)]
struct Args {
    /// An initialised manager data directory, whose issuing CA signs the echo certificate.
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the bound addresses are written.
    #[arg(long)]
    run_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    opi_tests::sim::raise_open_files()?;
    std::fs::create_dir_all(&args.run_dir)?;
    let run_dir = args.run_dir.clone();
    opi_tests::sim::echo::serve(&args.data_dir, args.listen, args.metrics_listen, |addrs| {
        std::fs::write(run_dir.join("metrics-addr"), addrs.metrics.to_string())?;
        std::fs::write(run_dir.join("listen-addr"), addrs.listen.to_string())?;
        Ok(())
    })
    .await
}
