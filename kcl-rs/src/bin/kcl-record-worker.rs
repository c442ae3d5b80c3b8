//! A consumer worker whose processor prints every record it gets, for multi-process
//! tests of kcl-rs. One JSON line per event on stdout:
//! `{"ev":"rec","w":..,"shard":..,"seq":..,"sub":..,"pk":..,"data":..,"t":<unix nanos>}`,
//! `{"ev":"cp","w":..,"shard":..,"seq":..,"sub":..}` after each successful checkpoint,
//! `{"ev":"end","w":..,"shard":..,"t":..}` when a shard ended.
//! SIGTERM: graceful shutdown. SIGKILL: a crash.
//!
//! Usage: `kcl-record-worker <kinesis-url> <dynamodb-url> <stream> <application> <worker-id> <failover-ms>`
//!
//! With `KCL_LOCAL_ACCESS_KEY_ID` set, its requests to local endpoints are signed with
//! that key (the IAM principal a strict local AWS binds to it). With
//! `KCL_RECORD_WORKER_FAN_OUT=1` it reads with enhanced fan-out instead of polling.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcl::aws::{Clients, Endpoints};
use kcl::checkpoint::Checkpointer;
use kcl::config::{InitialPosition, RetrievalMode, WorkerConfig};
use kcl::processor::{ProcessRecordsInput, RecordProcessor};
use kcl::worker::Worker;
use tokio_util::sync::CancellationToken;

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Printer {
    worker: String,
    shard: String,
}

impl RecordProcessor for Printer {
    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        let mut out = String::new();
        for r in &input.records {
            out.push_str(&format!(
                "{{\"ev\":\"rec\",\"w\":{},\"shard\":{},\"seq\":{},\"sub\":{},\"pk\":{},\"data\":{},\"t\":{}}}\n",
                json_str(&self.worker),
                json_str(&self.shard),
                json_str(&r.sequence_number),
                r.sub_sequence_number,
                json_str(&r.partition_key),
                json_str(&String::from_utf8_lossy(&r.data)),
                now_nanos()
            ));
        }
        print!("{out}");
        if checkpointer.checkpoint().await.is_ok() {
            let cp = checkpointer.last_checkpoint();
            println!(
                "{{\"ev\":\"cp\",\"w\":{},\"shard\":{},\"seq\":{},\"sub\":{}}}",
                json_str(&self.worker),
                json_str(&self.shard),
                json_str(cp.position.as_str()),
                cp.sub_sequence
            );
        }
    }

    async fn shard_ended(&mut self, _checkpointer: &mut Checkpointer) {
        println!(
            "{{\"ev\":\"end\",\"w\":{},\"shard\":{},\"t\":{}}}",
            json_str(&self.worker),
            json_str(&self.shard),
            now_nanos()
        );
    }

    async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
        let _ = checkpointer.checkpoint().await;
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [
        _,
        kinesis,
        dynamodb,
        stream,
        application,
        worker_id,
        failover_ms,
    ] = args.as_slice()
    else {
        eprintln!(
            "usage: kcl-record-worker <kinesis-url> <dynamodb-url> <stream> <application> <worker-id> <failover-ms>"
        );
        return std::process::ExitCode::from(2);
    };
    let Ok(failover_ms) = failover_ms.parse::<u64>() else {
        eprintln!("failover-ms must be a whole number, got {failover_ms:?}");
        return std::process::ExitCode::from(2);
    };
    let clients =
        Clients::connect_from_env(&Endpoints::local(kinesis.clone(), dynamodb.clone())).await;
    let retrieval_mode = match std::env::var("KCL_RECORD_WORKER_FAN_OUT").as_deref() {
        Ok("1") => RetrievalMode::fan_out(),
        _ => RetrievalMode::Polling,
    };
    let config = match WorkerConfig::builder(stream.clone(), application.clone())
        .worker_id(worker_id.clone())
        .retrieval_mode(retrieval_mode)
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_millis(failover_ms))
        .idle_time_between_reads(Duration::from_millis(100))
        .build()
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let worker_name = worker_id.clone();
    let worker = Worker::new(config, &clients, move |shard: &str| Printer {
        worker: worker_name.clone(),
        shard: shard.to_string(),
    });
    let cancel = CancellationToken::new();
    let mut run = tokio::spawn(worker.run(cancel.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let result = tokio::select! {
        result = &mut run => result,
        _ = term.recv() => { cancel.cancel(); run.await }
        _ = tokio::signal::ctrl_c() => { cancel.cancel(); run.await }
    };
    match result {
        Ok(Ok(())) => {
            println!("{{\"ev\":\"stopped\",\"w\":{}}}", json_str(worker_id));
            std::process::ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("worker failed: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("worker panicked: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
