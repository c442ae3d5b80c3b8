use delivery_app::events::parse;
use delivery_app::stats::StatsStore;
use delivery_app::stats::plan::{OrderState, ParsedRecord, plan_chunk};
use kcl::checkpoint::ExtendedSequenceNumber;
use kcl::local::{LocalAws, LocalAwsOptions};
use std::collections::HashMap;
use std::time::Instant;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let store = StatsStore::new(aws.clients().await.dynamodb, "Probe");
    store.ensure_tables().await.unwrap();
    for (label, regions) in [("1 region", 1u64), ("2500 regions", 2500)] {
        let shard = format!("s-{regions}");
        let mut prev: Option<ExtendedSequenceNumber> = None;
        let mut all = std::collections::BTreeMap::new();
        let mut seq = 0u64;
        let n_tx = 60;
        let t0 = Instant::now();
        for t in 0..n_tx {
            let recs: Vec<ParsedRecord> = (0..99).map(|i| {
                seq += 1;
                let r = seq % regions;
                let json = format!(r#"{{"type":"order_created","order_id":"{shard}-{t}-{i}","created_at":1,"pickup":{{"x":{},"y":{}}},"dropoff":{{"x":0,"y":0}},"price_cents":5}}"#, r / 50, r % 50);
                ParsedRecord { position: ExtendedSequenceNumber::at(seq.to_string(), 0), partition_key: "k".into(), raw: json.clone().into_bytes(), parsed: Some(parse(json.as_bytes())) }
            }).collect();
            let states: HashMap<String, Option<OrderState>> = recs
                .iter()
                .map(|r| {
                    (
                        r.parsed
                            .as_ref()
                            .unwrap()
                            .as_ref()
                            .unwrap()
                            .order_id()
                            .to_string(),
                        None,
                    )
                })
                .collect();
            let chunk = plan_chunk(&shard, &recs, &states);
            for (r, n) in &chunk.delta.regions {
                *all.entry(*r).or_insert(0u64) += n;
            }
            store
                .apply(&shard, prev.as_ref(), &all, &chunk)
                .await
                .unwrap();
            prev = Some(chunk.last.clone());
        }
        println!(
            "{label}: {:.1} ms/tx",
            t0.elapsed().as_secs_f64() * 1000.0 / n_tx as f64
        );
        // stats-only updates (1 item)
        let t0 = Instant::now();
        for _ in 0..60 {
            seq += 1;
            let json = format!(
                r#"{{"type":"order_created","order_id":"x{seq}","created_at":1,"pickup":{{"x":1,"y":1}},"dropoff":{{"x":0,"y":0}},"price_cents":5}}"#
            );
            let mut rec = ParsedRecord {
                position: ExtendedSequenceNumber::at(seq.to_string(), 0),
                partition_key: "k".into(),
                raw: json.clone().into_bytes(),
                parsed: Some(parse(json.as_bytes())),
            };
            rec.parsed = None;
            let chunk = plan_chunk(&shard, &[rec], &HashMap::new());
            store
                .apply(&shard, prev.as_ref(), &all, &chunk)
                .await
                .unwrap();
            prev = Some(chunk.last.clone());
        }
        println!(
            "{label}: stats-only {:.1} ms/tx",
            t0.elapsed().as_secs_f64() * 1000.0 / 60.0
        );
    }
}
