//! The event schema on the stream (JSON, one event per user record) and its validating
//! parser, which names why an event is rejected.
//!
//! ```text
//! {"type":"order_created","order_id":"o42-0000017","created_at":1704067200123,
//!  "pickup":{"x":12,"y":40},"dropoff":{"x":14,"y":37},"price_cents":2350, ...}
//! {"type":"order_assigned","order_id":"o42-0000017","driver_id":"driver-003","assigned_at":...}
//! {"type":"order_completed","order_id":"o42-0000017","completed_at":...}
//! ```
//!
//! Money is integer cents and times are integer milliseconds since the Unix epoch, so
//! every sum the statistics keep is exact. Other fields (customer, restaurant, trace
//! ids, ...) are carried for realism and ignored by the parser.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Regions per side of the square grid: regions are `(x, y)` with `0 <= x, y < GRID`.
pub const GRID: u8 = 50;

/// One region of the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Region {
    /// Column, `0..GRID`.
    pub x: u8,
    /// Row, `0..GRID`.
    pub y: u8,
}

impl Region {
    /// The region's attribute name in the statistics items, e.g. `r12_40`.
    pub fn key(&self) -> String {
        format!("r{}_{}", self.x, self.y)
    }

    /// Parses [`Region::key`]'s spelling.
    ///
    /// ```
    /// use delivery_app::events::Region;
    /// let r = Region { x: 12, y: 40 };
    /// assert_eq!(Region::from_key(&r.key()), Some(r));
    /// assert_eq!(Region::from_key("r50_1"), None);
    /// ```
    pub fn from_key(key: &str) -> Option<Region> {
        let (x, y) = key.strip_prefix('r')?.split_once('_')?;
        let (x, y) = (x.parse::<u8>().ok()?, y.parse::<u8>().ok()?);
        (x < GRID && y < GRID).then_some(Region { x, y })
    }

    /// Manhattan distance in regions.
    pub fn distance(&self, other: &Region) -> u32 {
        u32::from(self.x.abs_diff(other.x)) + u32::from(self.y.abs_diff(other.y))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}

/// A valid event, as the statistics need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A customer ordered: the order exists from `created_at` on.
    Created {
        /// The order.
        order_id: String,
        /// Where the food is picked up (the "ship-from" region).
        pickup: Region,
        /// Where it is delivered.
        dropoff: Region,
        /// What the customer pays, in cents.
        price_cents: i64,
        /// Event time, ms since the Unix epoch.
        created_at: i64,
    },
    /// A driver accepted the order.
    Assigned {
        /// The order.
        order_id: String,
        /// The driver.
        driver_id: String,
        /// Event time, ms since the Unix epoch.
        assigned_at: i64,
    },
    /// The order was delivered.
    Completed {
        /// The order.
        order_id: String,
        /// Event time, ms since the Unix epoch.
        completed_at: i64,
    },
}

impl Event {
    /// The order the event is about.
    pub fn order_id(&self) -> &str {
        match self {
            Event::Created { order_id, .. }
            | Event::Assigned { order_id, .. }
            | Event::Completed { order_id, .. } => order_id,
        }
    }

    /// The wire name of the event type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Created { .. } => ORDER_CREATED,
            Event::Assigned { .. } => ORDER_ASSIGNED,
            Event::Completed { .. } => ORDER_COMPLETED,
        }
    }
}

/// Wire name of [`Event::Created`].
pub const ORDER_CREATED: &str = "order_created";
/// Wire name of [`Event::Assigned`].
pub const ORDER_ASSIGNED: &str = "order_assigned";
/// Wire name of [`Event::Completed`].
pub const ORDER_COMPLETED: &str = "order_completed";

/// Why an event goes to the dead-letter table instead of into the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not JSON, not an object, a required field missing or of the wrong type.
    MalformedJson,
    /// A `type` other than the three known ones.
    UnknownEventType,
    /// A pickup or drop-off region outside the 50×50 grid.
    RegionOffGrid,
    /// A negative price.
    NegativePrice,
    /// An assignment for an order not created (yet), or timed before its creation.
    AssignedBeforeCreated,
    /// A completion for an order not created (yet), or timed before its creation.
    CompletedBeforeCreated,
    /// A second creation, assignment or completion of the same order.
    DuplicateEvent,
    /// An order id or driver id longer than [`MAX_ID_BYTES`]: DynamoDB refuses keys
    /// over 2,048 bytes and items over 400 KB, and no real id is that long.
    FieldTooLong,
    /// A time difference or a sum of the statistics that would not fit in 64 bits.
    SumOverflow,
    /// DynamoDB refused the record's writes (a `ValidationException`) although the plan
    /// found nothing wrong with it: isolated by re-planning without it.
    RejectedByDynamodb,
}

impl Reason {
    /// Every reason, in a stable order.
    pub const ALL: [Reason; 10] = [
        Reason::MalformedJson,
        Reason::UnknownEventType,
        Reason::RegionOffGrid,
        Reason::NegativePrice,
        Reason::AssignedBeforeCreated,
        Reason::CompletedBeforeCreated,
        Reason::DuplicateEvent,
        Reason::FieldTooLong,
        Reason::SumOverflow,
        Reason::RejectedByDynamodb,
    ];

    /// The reasons of the simulator's ordinary bad events (`--bad-events`), one kind
    /// after the other.
    pub const SIMULATED: [Reason; 7] = [
        Reason::MalformedJson,
        Reason::UnknownEventType,
        Reason::RegionOffGrid,
        Reason::NegativePrice,
        Reason::AssignedBeforeCreated,
        Reason::CompletedBeforeCreated,
        Reason::DuplicateEvent,
    ];

    /// The snake_case name used in tables, JSON and attribute names.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::UnknownEventType => "unknown_event_type",
            Reason::RegionOffGrid => "region_off_grid",
            Reason::NegativePrice => "negative_price",
            Reason::AssignedBeforeCreated => "assigned_before_created",
            Reason::CompletedBeforeCreated => "completed_before_created",
            Reason::DuplicateEvent => "duplicate_event",
            Reason::FieldTooLong => "field_too_long",
            Reason::SumOverflow => "sum_overflow",
            Reason::RejectedByDynamodb => "rejected_by_dynamodb",
        }
    }

    /// Parses [`Reason::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected event: the reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// What exactly, e.g. `pickup (50, 3) is off the 50x50 grid`.
    pub detail: String,
    /// The order id, when the event had a readable one.
    pub order_id: Option<String>,
}

impl Rejection {
    /// A rejection whose detail and order id are cut to [`MAX_DETAIL_BYTES`] and
    /// [`MAX_ID_BYTES`]: both are stored in the dead letter, which must fit in an item
    /// whatever the record holds.
    pub fn new(reason: Reason, detail: impl Into<String>, order_id: Option<&str>) -> Rejection {
        Rejection {
            reason,
            detail: truncate(&detail.into(), MAX_DETAIL_BYTES).to_string(),
            order_id: order_id.map(|id| truncate(id, MAX_ID_BYTES).to_string()),
        }
    }
}

/// The longest order id or driver id accepted, in bytes. DynamoDB limits a partition
/// key to 2,048 bytes and an item to 400 KB; a bound far below both keeps every item
/// and transaction size computable in advance.
pub const MAX_ID_BYTES: usize = 128;

/// The longest [`Rejection::detail`] kept, in bytes.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// The longest prefix of `text` of at most `max` bytes that ends on a character
/// boundary.
///
/// ```
/// use delivery_app::events::truncate;
/// assert_eq!(truncate("héllo", 2), "h");
/// assert_eq!(truncate("héllo", 3), "hé");
/// assert_eq!(truncate("hi", 10), "hi");
/// ```
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A `T` read from a JSON object only: serde's derived `Deserialize` for a struct also
/// takes an array of its fields in declaration order (`["order_completed","o1",null,
/// ...]`), which is not the schema.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(Object)
    }
}

#[derive(Deserialize)]
struct RawRegion {
    x: i64,
    y: i64,
}

/// Every field any event type uses; which are required depends on `type`.
#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    order_id: Option<String>,
    pickup: Option<Object<RawRegion>>,
    dropoff: Option<Object<RawRegion>>,
    price_cents: Option<i64>,
    created_at: Option<i64>,
    driver_id: Option<String>,
    assigned_at: Option<i64>,
    completed_at: Option<i64>,
}

/// Parses and validates one event.
///
/// ```
/// use delivery_app::events::{parse, Event, Reason};
///
/// let ok = br#"{"type":"order_completed","order_id":"o1","completed_at":5}"#;
/// assert_eq!(parse(ok), Ok(Event::Completed { order_id: "o1".into(), completed_at: 5 }));
/// let bad = br#"{"type":"order_refunded","order_id":"o1"}"#;
/// assert_eq!(parse(bad).unwrap_err().reason, Reason::UnknownEventType);
/// assert_eq!(parse(b"{not json").unwrap_err().reason, Reason::MalformedJson);
/// ```
pub fn parse(data: &[u8]) -> Result<Event, Rejection> {
    // JSON is UTF-8 throughout; serde_json checks only the strings it keeps.
    let text = std::str::from_utf8(data)
        .map_err(|e| Rejection::new(Reason::MalformedJson, format!("not UTF-8: {e}"), None))?;
    let Object(raw): Object<RawEvent> = serde_json::from_str(text)
        .map_err(|e| Rejection::new(Reason::MalformedJson, e.to_string(), None))?;
    let Some(kind) = raw.kind.as_deref() else {
        return Err(Rejection::new(
            Reason::MalformedJson,
            "missing field `type`",
            raw.order_id.as_deref(),
        ));
    };
    if ![ORDER_CREATED, ORDER_ASSIGNED, ORDER_COMPLETED].contains(&kind) {
        return Err(Rejection::new(
            Reason::UnknownEventType,
            format!("unknown event type {kind:?}"),
            raw.order_id.as_deref(),
        ));
    }
    let order_id = match raw.order_id.as_deref() {
        Some(id) if id.len() > MAX_ID_BYTES => {
            return Err(too_long("order_id", id, None));
        }
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            return Err(Rejection::new(
                Reason::MalformedJson,
                "missing or empty `order_id`",
                None,
            ));
        }
    };
    let missing = |field: &str| {
        Rejection::new(
            Reason::MalformedJson,
            format!("{kind} without `{field}`"),
            Some(&order_id),
        )
    };
    match kind {
        ORDER_CREATED => {
            let pickup = raw.pickup.ok_or_else(|| missing("pickup"))?;
            let dropoff = raw.dropoff.ok_or_else(|| missing("dropoff"))?;
            let price_cents = raw.price_cents.ok_or_else(|| missing("price_cents"))?;
            let created_at = raw.created_at.ok_or_else(|| missing("created_at"))?;
            let pickup = on_grid("pickup", &pickup.0, &order_id)?;
            let dropoff = on_grid("dropoff", &dropoff.0, &order_id)?;
            if price_cents < 0 {
                return Err(Rejection::new(
                    Reason::NegativePrice,
                    format!("price_cents {price_cents} is negative"),
                    Some(&order_id),
                ));
            }
            Ok(Event::Created {
                order_id,
                pickup,
                dropoff,
                price_cents,
                created_at,
            })
        }
        ORDER_ASSIGNED => {
            let driver_id = raw.driver_id.ok_or_else(|| missing("driver_id"))?;
            if driver_id.len() > MAX_ID_BYTES {
                return Err(too_long("driver_id", &driver_id, Some(&order_id)));
            }
            let assigned_at = raw.assigned_at.ok_or_else(|| missing("assigned_at"))?;
            Ok(Event::Assigned {
                order_id,
                driver_id,
                assigned_at,
            })
        }
        _ => {
            let completed_at = raw.completed_at.ok_or_else(|| missing("completed_at"))?;
            Ok(Event::Completed {
                order_id,
                completed_at,
            })
        }
    }
}

/// An id over [`MAX_ID_BYTES`]; the dead letter keeps the order id only when it is
/// not the field at fault.
fn too_long(field: &str, value: &str, order_id: Option<&str>) -> Rejection {
    Rejection::new(
        Reason::FieldTooLong,
        format!(
            "{field} is {} bytes long, over the {MAX_ID_BYTES}-byte limit",
            value.len()
        ),
        order_id,
    )
}

fn on_grid(field: &str, raw: &RawRegion, order_id: &str) -> Result<Region, Rejection> {
    let inside = |v: i64| (0..i64::from(GRID)).contains(&v);
    if inside(raw.x) && inside(raw.y) {
        Ok(Region {
            x: raw.x as u8,
            y: raw.y as u8,
        })
    } else {
        Err(Rejection::new(
            Reason::RegionOffGrid,
            format!(
                "{field} ({}, {}) is off the {GRID}x{GRID} grid",
                raw.x, raw.y
            ),
            Some(order_id),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_from_a_table() {
        let cases: &[(&str, Result<&str, Reason>)] = &[
            (
                r#"{"type":"order_created","order_id":"o1","created_at":1,"pickup":{"x":0,"y":49},"dropoff":{"x":3,"y":4},"price_cents":0,"extra":[1,2]}"#,
                Ok(ORDER_CREATED),
            ),
            (
                r#"{"type":"order_assigned","order_id":"o1","driver_id":"d","assigned_at":2}"#,
                Ok(ORDER_ASSIGNED),
            ),
            ("", Err(Reason::MalformedJson)),
            ("[1,2]", Err(Reason::MalformedJson)),
            ("\u{0}\u{1}binary", Err(Reason::MalformedJson)),
            // An array of the fields in declaration order, or a region as `[x, y]`: what
            // serde's derived `Deserialize` takes for a struct, not an object.
            (
                r#"["order_completed","o1",null,null,null,null,null,null,5]"#,
                Err(Reason::MalformedJson),
            ),
            (
                r#"{"type":"order_created","order_id":"o1","created_at":1,"pickup":[1,2],"dropoff":{"x":0,"y":0},"price_cents":1}"#,
                Err(Reason::MalformedJson),
            ),
            (r#"{"order_id":"o1"}"#, Err(Reason::MalformedJson)),
            (r#"{"type":7,"order_id":"o1"}"#, Err(Reason::MalformedJson)),
            (
                r#"{"type":"order_completed","order_id":""}"#,
                Err(Reason::MalformedJson),
            ),
            (
                r#"{"type":"order_completed","order_id":"o1"}"#,
                Err(Reason::MalformedJson),
            ),
            (
                r#"{"type":"order_completed","order_id":"o1","completed_at":"soon"}"#,
                Err(Reason::MalformedJson),
            ),
            (
                r#"{"type":"order_created","order_id":"o1","created_at":1,"pickup":{"x":0,"y":0},"dropoff":{"x":0,"y":0},"price_cents":12.5}"#,
                Err(Reason::MalformedJson),
            ),
            (
                r#"{"type":"order_cancelled","order_id":"o1"}"#,
                Err(Reason::UnknownEventType),
            ),
            (
                r#"{"type":"order_created","order_id":"o1","created_at":1,"pickup":{"x":50,"y":0},"dropoff":{"x":0,"y":0},"price_cents":1}"#,
                Err(Reason::RegionOffGrid),
            ),
            (
                r#"{"type":"order_created","order_id":"o1","created_at":1,"pickup":{"x":1,"y":1},"dropoff":{"x":0,"y":-1},"price_cents":1}"#,
                Err(Reason::RegionOffGrid),
            ),
            (
                r#"{"type":"order_created","order_id":"o1","created_at":1,"pickup":{"x":1,"y":1},"dropoff":{"x":0,"y":1},"price_cents":-1}"#,
                Err(Reason::NegativePrice),
            ),
        ];
        for (input, expected) in cases {
            let got = parse(input.as_bytes());
            match expected {
                Ok(kind) => assert_eq!(got.unwrap().type_name(), *kind, "{input}"),
                Err(reason) => assert_eq!(got.unwrap_err().reason, *reason, "{input}"),
            }
        }
    }

    #[test]
    fn ids_over_the_bound_are_too_long() {
        let id = |n: usize| "o".repeat(n);
        let created = |order: &str| {
            format!(
                r#"{{"type":"order_created","order_id":"{order}","created_at":1,"pickup":{{"x":0,"y":0}},"dropoff":{{"x":0,"y":0}},"price_cents":1}}"#
            )
        };
        let assigned = |driver: &str| {
            format!(
                r#"{{"type":"order_assigned","order_id":"o1","driver_id":"{driver}","assigned_at":2}}"#
            )
        };
        let cases: Vec<(String, Option<Reason>)> = vec![
            (created(&id(MAX_ID_BYTES)), None),
            (created(&id(MAX_ID_BYTES + 1)), Some(Reason::FieldTooLong)),
            (created(&id(3_000)), Some(Reason::FieldTooLong)),
            (assigned(&id(MAX_ID_BYTES)), None),
            (assigned(&id(MAX_ID_BYTES + 1)), Some(Reason::FieldTooLong)),
            (assigned(&id(500 * 1024)), Some(Reason::FieldTooLong)),
        ];
        for (input, expected) in cases {
            let got = parse(input.as_bytes());
            assert_eq!(
                got.as_ref().err().map(|r| r.reason),
                expected,
                "{}",
                &input[..60]
            );
            if let Err(rejection) = got {
                assert!(rejection.detail.len() <= MAX_DETAIL_BYTES);
                assert!(rejection.order_id.is_none_or(|o| o.len() <= MAX_ID_BYTES));
            }
        }
    }

    #[test]
    fn a_rejection_keeps_bounded_fields_whatever_the_record() {
        let huge_type = format!(r#"{{"type":"{}","order_id":"o1"}}"#, "t".repeat(100_000));
        let rejection = parse(huge_type.as_bytes()).unwrap_err();
        assert_eq!(rejection.reason, Reason::UnknownEventType);
        assert!(rejection.detail.len() <= MAX_DETAIL_BYTES);
    }

    #[test]
    fn invalid_utf8_is_malformed_even_in_an_ignored_field() {
        let data = b"{\"type\":\"order_completed\",\"order_id\":\"o1\",\"completed_at\":5,\"note\":\"\xff\"}";
        assert_eq!(parse(data).unwrap_err().reason, Reason::MalformedJson);
    }

    #[test]
    fn reasons_round_trip_their_names() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }
}
