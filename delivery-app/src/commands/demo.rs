//! `delivery-app demo`: the whole application in about a minute, on a local AWS
//! started in-process: stream, simulator, three worker processes, a crash and a
//! restart, a split and a merge, live statistics, and the final statistics beside the
//! ground truth.

use std::sync::Arc;
use std::time::Duration;

use delivery_app::autoscaler::ScalerConfig;
use delivery_app::connect::NameArgs;
use delivery_app::dashboard::{Dashboard, serve as serve_dashboard};
use delivery_app::report::to_table;
use delivery_app::scenario::{self, ScenarioConfig, Step};
use delivery_app::stats::summary::thousands;
use delivery_app::worker::Retrieval;
use kcl::aws::Endpoints;
use kcl_local::{LocalAws, LocalAwsOptions};

use super::{CommandError, SimArgs, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    names: NameArgs,
    #[command(flatten)]
    sim: SimArgs,
    /// Real seconds of event production (the whole demo takes a few seconds more).
    #[arg(long, default_value_t = 40.0)]
    seconds: f64,
    /// Simulated seconds per real second: 30 plays 20 minutes of the city in 40 s, about
    /// 1,000 events a second.
    #[arg(long, default_value_t = 30.0)]
    speed: f64,
    /// Shards the stream starts with.
    #[arg(long, default_value_t = 3)]
    shards: i32,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Lease failover time of the workers, ms (how soon a killed worker's shards move).
    #[arg(long, default_value_t = 3_000)]
    failover_ms: u64,
    /// How the workers read the stream: GetRecords polling, or enhanced fan-out
    /// (SubscribeToShard) through a consumer named after the application.
    #[arg(long, value_enum, default_value_t = Retrieval::Polling)]
    retrieval: Retrieval,
    /// Print live statistics every this many seconds.
    #[arg(long, default_value_t = 4.0)]
    live_secs: f64,
    /// Skip the kill, restart, split and merge.
    #[arg(long)]
    no_chaos: bool,
    /// Also run the auto-scaler, with thresholds low enough to act in a demo.
    #[arg(long)]
    autoscale: bool,
    /// Use an already running AWS (e.g. `delivery-app local`) at these endpoints
    /// instead of starting one in-process.
    #[arg(long, requires = "dynamodb_endpoint")]
    kinesis_endpoint: Option<String>,
    /// See --kinesis-endpoint.
    #[arg(long, requires = "kinesis_endpoint")]
    dynamodb_endpoint: Option<String>,
    /// Directory for the worker processes' logs (default: a temporary directory).
    #[arg(long)]
    log_dir: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics: the demo's own (the producer's) at
    /// `http://ADDR/metrics`, and worker `wN`'s at the port N above it.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Serve the live dashboard (at this address; default 127.0.0.1 on a free port) and
    /// print its URL; after the run it stays up until Ctrl-C.
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    dashboard: Option<std::net::SocketAddr>,
}

pub async fn run(args: DemoArgs) -> Result<(), CommandError> {
    let (local, endpoints) = match (&args.kinesis_endpoint, &args.dynamodb_endpoint) {
        (Some(k), Some(d)) => (None, Endpoints::local(k.clone(), d.clone())),
        _ => {
            let aws = LocalAws::start(LocalAwsOptions {
                stream_transition_ms: 500,
                ..LocalAwsOptions::default()
            })
            .await?;
            let endpoints = aws.endpoints();
            println!(
                "local AWS started in-process: Kinesis {} DynamoDB {}",
                endpoints.kinesis.as_deref().unwrap_or_default(),
                endpoints.dynamodb.as_deref().unwrap_or_default()
            );
            (Some(aws), endpoints)
        }
    };
    let metrics = tokio_util::sync::CancellationToken::new();
    let _stop_metrics = metrics.clone().drop_guard();
    if let Some(addr) = args.metrics_addr {
        let bound = delivery_app::metrics::serve(
            addr,
            Some(delivery_app::metrics::gauge_idle_timeout(
                Duration::from_millis(args.failover_ms),
            )),
            metrics.clone(),
        )
        .await?;
        if addr.port() == 0 {
            // Workers' ports derive from a fixed one; with port 0 they serve none.
            println!(
                "metrics: producer at http://{bound}/metrics (give a fixed port for the workers' too)"
            );
        } else {
            println!(
                "metrics: producer at http://{bound}/metrics, worker wN at port {} + N",
                bound.port()
            );
        }
    }
    let log_dir = args.log_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("delivery-demo-{}", std::process::id()))
    });
    let sim = args.sim.config(args.seconds * args.speed, 14);
    println!(
        "simulating {:.0} min of a 50x50 city with {} drivers (about {} orders, seed {}, keys by {:?}, {} bad events) at {}x",
        args.seconds * args.speed / 60.0,
        sim.drivers,
        thousands(sim.expected_orders()),
        sim.seed,
        sim.keys,
        sim.bad_events,
        args.speed
    );
    let steps = if args.no_chaos {
        Vec::new()
    } else {
        vec![
            (0.2, Step::Kill),
            (0.35, Step::Split),
            (0.5, Step::Restart),
            (0.65, Step::Merge),
        ]
    };
    let config = ScenarioConfig {
        exe: std::env::current_exe()?,
        endpoints,
        stream: args.names.stream.clone(),
        app: args.names.app.clone(),
        shards: args.shards,
        workers: args.workers,
        failover: Duration::from_millis(args.failover_ms),
        poll: Duration::from_millis(100),
        retrieval: args.retrieval,
        balance: Default::default(),
        sim,
        speed: Some(args.speed),
        steps,
        autoscale: args.autoscale.then(|| ScalerConfig {
            split_share: 0.3,
            merge_share: 0.05,
            sustain: Duration::from_secs(5),
            cooldown: Duration::from_secs(10),
            min_shards: 1,
            max_shards: 8,
            interval: Duration::from_secs(1),
        }),
        live_every: Some(Duration::from_secs_f64(args.live_secs.max(0.5))),
        log_dir: Some(log_dir.clone()),
        settle_timeout: Duration::from_secs(120),
        track_latency: false,
        workers_after_production: false,
        audit_dir: None,
        // Harmless on an unrestricted local AWS; on `local --strict` the run proves the
        // documented policies suffice.
        as_principals: true,
        metrics_base: args.metrics_addr.filter(|a| a.port() != 0),
        producer_rate_limit: None,
        local_aws: None,
    };
    let stop_dashboard = tokio_util::sync::CancellationToken::new();
    let _stop_dashboard = stop_dashboard.clone().drop_guard();
    let dashboard = match args.dashboard {
        Some(addr) => {
            let clients = kcl::aws::Clients::connect(&config.endpoints).await;
            let dashboard = Dashboard::new(&clients, &args.names.stream, &args.names.app);
            let bound =
                serve_dashboard(Arc::clone(&dashboard), addr, stop_dashboard.clone()).await?;
            println!("dashboard at http://{bound}/");
            Some((dashboard, bound))
        }
        None => None,
    };
    let noted = dashboard.as_ref().map(|(d, _)| Arc::clone(d));
    let say: scenario::Narrator = Arc::new(move |line: &str| {
        println!("{line}");
        // Steps and the auto-scaler's actions, not the periodic progress lines.
        if let Some(dashboard) = &noted
            && !line.contains("s] sim ")
        {
            dashboard.note(line.trim());
        }
    });
    let report = tokio::select! {
        report = scenario::run(config, say) => report?,
        _ = shutdown_signal() => {
            // Dropping the run kills its worker processes (they are spawned with
            // kill-on-drop); the in-process AWS gets a bounded moment to stop.
            println!("interrupted: stopping the workers and the local AWS");
            if let Some(aws) = local {
                let _ = tokio::time::timeout(Duration::from_secs(5), aws.shutdown()).await;
            }
            return Err("interrupted".into());
        }
    };
    println!(
        "\nFinal statistics (DynamoDB, summed over {} shard items) beside the simulator's ground truth:\n",
        report.stats.shards.len()
    );
    print!("{}", to_table(&report.stats, Some(&report.truth)));
    println!(
        "\n{} events in {:.1}s end to end; worker logs in {}",
        thousands(report.truth.records),
        report.end_to_end_time.as_secs_f64(),
        log_dir.display()
    );
    if let Some((_, bound)) = &dashboard {
        println!("the run is over; the dashboard stays at http://{bound}/ until Ctrl-C");
        shutdown_signal().await;
    }
    if let Some(aws) = local {
        aws.shutdown().await;
    }
    if report.comparison.matches {
        Ok(())
    } else {
        Err("the statistics do not match the ground truth".into())
    }
}
