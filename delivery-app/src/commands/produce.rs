//! `delivery-app produce`: run the simulation and put its events on the stream, then
//! write the ground truth.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use delivery_app::connect::{AwsArgs, NameArgs};
use delivery_app::sim::Simulation;
use delivery_app::sink::{EventSink, Progress, replay};
use delivery_app::stats::summary::{money, seconds, thousands};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{CommandError, SHUTDOWN_GRACE, SimArgs, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    aws: AwsArgs,
    #[command(flatten)]
    names: NameArgs,
    #[command(flatten)]
    sim: SimArgs,
    /// Serve the producer's Prometheus metrics at `http://ADDR/metrics` while producing
    /// (port 0: any free port; the address is printed).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Simulated seconds during which orders are created.
    #[arg(long, default_value_t = 600.0)]
    sim_seconds: f64,
    /// Simulated seconds per real second (60: an hour in a minute); 0 puts events as
    /// fast as the producer takes them.
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    /// Where to write the ground truth (JSON): the exact statistics the produced
    /// events imply. Compare with `delivery-app stats --truth <file>`.
    #[arg(long, default_value = "ground-truth.json")]
    truth_file: PathBuf,
}

pub async fn run(args: ProduceArgs) -> Result<(), CommandError> {
    let metrics = tokio_util::sync::CancellationToken::new();
    let _stop_metrics = metrics.clone().drop_guard();
    if let Some(addr) = args.metrics_addr {
        let bound = delivery_app::metrics::serve(addr, None, metrics.clone()).await?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    let clients = args.aws.clients(Some(&args.names.stream), None).await?;
    let stream = &args.names.stream;
    if let Err(e) = kcl::stream::list_shards(&clients.kinesis, stream).await {
        return Err(format!(
            "cannot use stream {stream} ({e}); create it first: delivery-app create-stream"
        )
        .into());
    }
    let config = args.sim.config(args.sim_seconds, 0);
    eprintln!(
        "producing about {} orders ({} s simulated) at speed {} into {stream}",
        thousands(config.expected_orders()),
        args.sim_seconds,
        if args.speed > 0.0 {
            format!("{}x", args.speed)
        } else {
            "max".to_string()
        }
    );
    let mut sink = EventSink::new(clients.kinesis.clone(), stream, false)?;
    let counters = sink.counters();
    let (progress_tx, mut progress) = watch::channel(Progress::default());
    let cancel = CancellationToken::new();
    let speed = (args.speed > 0.0).then_some(args.speed);
    let started = Instant::now();
    let mut producing = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let mut sim = Simulation::new(config);
            replay(&mut sim, &mut sink, speed, &progress_tx, &cancel).await;
            let truth = sim.truth();
            (truth, sink.finish().await)
        }
    });
    let mut interrupted = false;
    // Once interrupted, the events in flight get until then to be acknowledged.
    let mut give_up = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let (truth, finished) = loop {
        tokio::select! {
            done = &mut producing => break done?,
            _ = shutdown_signal(), if !interrupted => {
                eprintln!("\ninterrupted: finishing the events in flight; the ground truth covers what was put");
                interrupted = true;
                give_up = tokio::time::Instant::now() + SHUTDOWN_GRACE;
                cancel.cancel();
            }
            _ = tokio::time::sleep_until(give_up), if interrupted => {
                producing.abort();
                return Err(format!(
                    "the events in flight were not acknowledged within {} s of the \
                     interruption (Kinesis not answering?); no ground truth written",
                    SHUTDOWN_GRACE.as_secs()
                )
                .into());
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let p = *progress.borrow_and_update();
                let acked = counters.acknowledged.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>5.1}%  simulated {:>7.1}s  put {:>9} events ({:>6.0}/s)  failed {}",
                    p.fraction * 100.0,
                    p.sim_ms as f64 / 1000.0,
                    thousands(acked),
                    acked as f64 / started.elapsed().as_secs_f64(),
                    counters.failed.load(Ordering::Relaxed)
                );
            }
        }
    };
    std::fs::write(&args.truth_file, serde_json::to_vec_pretty(&truth)?)
        .map_err(|e| format!("cannot write {}: {e}", args.truth_file.display()))?;
    finished?;
    let s = &truth.summary;
    println!(
        "put {} events ({} orders, {} bad) in {:.1}s; revenue {}, avg response {}, avg \
         completion {}; ground truth in {}",
        thousands(truth.records),
        thousands(s.orders_created),
        truth.dead_letter_count(),
        started.elapsed().as_secs_f64(),
        money(s.completed_price_cents),
        seconds(s.avg_response_ms()),
        seconds(s.avg_completion_ms()),
        args.truth_file.display()
    );
    Ok(())
}
