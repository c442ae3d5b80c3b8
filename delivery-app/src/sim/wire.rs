//! The simulator's side of the event schema: the JSON it writes, with the fields a
//! real platform carries besides the ones the statistics read (about 370 bytes an
//! event).

use serde::Serialize;

use crate::events::{ORDER_ASSIGNED, ORDER_COMPLETED, ORDER_CREATED, Region};

/// Client application that emitted the event.
#[derive(Serialize)]
struct App {
    name: &'static str,
    version: &'static str,
    platform: &'static str,
}

const PLATFORMS: [&str; 3] = ["ios", "android", "web"];
const PAYMENTS: [&str; 4] = ["card", "wallet", "card", "cash"];
const VEHICLES: [&str; 3] = ["bike", "scooter", "car"];

fn app(pick: u64) -> App {
    App {
        name: "courier-app",
        version: "4.12.3",
        platform: PLATFORMS[(pick % 3) as usize],
    }
}

/// Fields common to every event, and the randomness the extra fields use.
pub struct Envelope<'a> {
    /// Unique per event of a run.
    pub event_id: String,
    /// The order.
    pub order_id: &'a str,
    /// 32 hex digits.
    pub trace_id: String,
    /// Picks the platform, payment method, vehicle...
    pub pick: u64,
}

#[derive(Serialize)]
struct Created<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event_id: &'a str,
    order_id: &'a str,
    created_at: i64,
    pickup: Region,
    dropoff: Region,
    price_cents: i64,
    customer_id: String,
    restaurant_id: String,
    items: u64,
    payment_method: &'static str,
    app: App,
    trace_id: &'a str,
}

/// An `order_created` event.
pub fn created(
    env: &Envelope<'_>,
    created_at: i64,
    pickup: Region,
    dropoff: Region,
    price_cents: i64,
) -> Vec<u8> {
    serde_json::to_vec(&Created {
        kind: ORDER_CREATED,
        event_id: &env.event_id,
        order_id: env.order_id,
        created_at,
        pickup,
        dropoff,
        price_cents,
        customer_id: format!("cust-{:07}", env.pick % 9_999_999),
        restaurant_id: format!("rest-{:02}-{:02}-{}", pickup.x, pickup.y, env.pick % 7),
        items: 1 + env.pick % 6,
        payment_method: PAYMENTS[(env.pick % 4) as usize],
        app: app(env.pick),
        trace_id: &env.trace_id,
    })
    .expect("serialisable")
}

#[derive(Serialize)]
struct Assigned<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event_id: &'a str,
    order_id: &'a str,
    driver_id: &'a str,
    assigned_at: i64,
    driver_position: Region,
    vehicle: &'static str,
    eta_pickup_ms: i64,
    dispatcher: &'static str,
    app: App,
    trace_id: &'a str,
}

/// An `order_assigned` event.
pub fn assigned(
    env: &Envelope<'_>,
    driver_id: &str,
    assigned_at: i64,
    driver_position: Region,
    eta_pickup_ms: i64,
) -> Vec<u8> {
    serde_json::to_vec(&Assigned {
        kind: ORDER_ASSIGNED,
        event_id: &env.event_id,
        order_id: env.order_id,
        driver_id,
        assigned_at,
        driver_position,
        vehicle: VEHICLES[(env.pick % 3) as usize],
        eta_pickup_ms,
        dispatcher: "nearest-available-driver/v3",
        app: app(env.pick >> 8),
        trace_id: &env.trace_id,
    })
    .expect("serialisable")
}

#[derive(Serialize)]
struct Completed<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event_id: &'a str,
    order_id: &'a str,
    completed_at: i64,
    driver_id: &'a str,
    dropoff: Region,
    distance_regions: u32,
    proof_of_delivery: &'static str,
    customer_rating: u64,
    tip_cents: i64,
    app: App,
    trace_id: &'a str,
}

/// An `order_completed` event.
pub fn completed(
    env: &Envelope<'_>,
    completed_at: i64,
    driver_id: &str,
    dropoff: Region,
    distance_regions: u32,
) -> Vec<u8> {
    serde_json::to_vec(&Completed {
        kind: ORDER_COMPLETED,
        event_id: &env.event_id,
        order_id: env.order_id,
        completed_at,
        driver_id,
        dropoff,
        distance_regions,
        proof_of_delivery: if env.pick.is_multiple_of(2) {
            "photo"
        } else {
            "handed_to_customer"
        },
        tip_cents: (env.pick % 5) as i64 * 50,
        customer_rating: 3 + env.pick % 3,
        app: app(env.pick >> 16),
        trace_id: &env.trace_id,
    })
    .expect("serialisable")
}

/// An event of a type the platform does not know (`order_refunded`).
pub fn unknown_type(env: &Envelope<'_>, at: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "order_refunded",
        "event_id": env.event_id,
        "order_id": env.order_id,
        "refunded_at": at,
        "amount_cents": 500,
        "trace_id": env.trace_id,
    }))
    .expect("serialisable")
}
