//! The checks of the `events` fuzz target, shared with delivery-app's normal test suite
//! (`delivery-app/tests/fuzz_regressions.rs` replays the kept corpus through them).
//! Both declare this file as a module next to the parser, `super::events`: the fuzz
//! target its own copy of `src/events.rs`, the test `delivery_app::events`.
//!
//! Each input is checked twice:
//! - As it is (`check_bytes`): `events::parse` never panics. An accepted event is valid
//!   (non-empty order id and ids within `MAX_ID_BYTES`, regions on the grid, no negative price), was a JSON object
//!   saying exactly that event, and parses back the same from its wire encoding. Input
//!   that is not UTF-8, not JSON or not an object is malformed; for an object, the
//!   outcome is the one the documented rules give (`expected`, written independently over
//!   `serde_json::Value`), except that an object repeating a key may be malformed instead.
//! - Structured (`check_mutation`): the first byte picks an event type and a mutation of
//!   a valid event (a field dropped, repeated or of the wrong type, numbers at and beyond
//!   the `i64` range, negative numbers, off-grid regions, an unknown type, deep nesting,
//!   an array for the object, broken bytes...), the rest of the input fills the event's
//!   fields, and the parser must give exactly the predicted outcome. This gets mutations
//!   past the JSON tokenizer into the validation rules.

use std::collections::HashSet;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::events::{
    self, Event, GRID, ORDER_ASSIGNED, ORDER_COMPLETED, ORDER_CREATED, Reason, Region, Rejection,
};

/// Runs every check on one input; panics on a violation.
pub fn check(data: &[u8]) {
    check_bytes(data);
    if let Some((&selector, rest)) = data.split_first() {
        check_mutation(selector, rest);
    }
}

/// The reasons `parse` itself gives; the others come from the order's state.
const PARSER_REASONS: [Reason; 5] = [
    Reason::MalformedJson,
    Reason::UnknownEventType,
    Reason::RegionOffGrid,
    Reason::NegativePrice,
    Reason::FieldTooLong,
];

fn check_bytes(data: &[u8]) {
    let parsed = events::parse(data);
    match &parsed {
        Ok(event) => check_valid(event),
        Err(rejection) => {
            assert!(PARSER_REASONS.contains(&rejection.reason), "{rejection:?}");
            assert!(!rejection.detail.is_empty(), "{rejection:?}");
        }
    }
    // A JSON text is UTF-8 (RFC 8259), and an event is a JSON object.
    if std::str::from_utf8(data).is_err() {
        assert_malformed(&parsed, "not UTF-8");
        return;
    }
    let json = match serde_json::from_slice::<Value>(data) {
        Ok(json) => json,
        Err(e) if beyond_value(&e) => {
            // Valid JSON that a `Value` cannot hold, in a field the parser may ignore.
            if parsed.is_ok() {
                assert_eq!(data.trim_ascii_start().first(), Some(&b'{'));
            }
            return;
        }
        Err(_) => return assert_malformed(&parsed, "not JSON"),
    };
    let Value::Object(object) = &json else {
        return assert_malformed(&parsed, "not an object");
    };
    // The same object without repeated keys (a `Value` keeps the last), or whitespace:
    // the documented rules apply to it exactly.
    let canonical = serde_json::to_vec(&json).unwrap();
    let canonical_parsed = events::parse(&canonical);
    assert_eq!(
        canonical_parsed.clone().map_err(|r| r.reason),
        expected(object),
        "{}",
        String::from_utf8_lossy(&canonical)
    );
    // (Details differ: they give positions in the text.)
    let outcome = |parsed: &Result<Event, Rejection>| {
        parsed
            .clone()
            .map_err(|rejection| (rejection.reason, rejection.order_id))
    };
    if outcome(&parsed) != outcome(&canonical_parsed) {
        // Only a repeated key tells them apart (the parser reads every occurrence, a
        // `Value` keeps the last): ambiguous, so malformed.
        assert!(repeats_a_key(data));
        assert_malformed(&parsed, "a key repeated");
    }
    if let Err(rejection) = &parsed {
        // An order id is the input's own, and a fully read event has one.
        let order_id = object.get("order_id").and_then(Value::as_str);
        if let Some(id) = &rejection.order_id {
            assert_eq!(Some(id.as_str()), order_id);
        }
        if [Reason::RegionOffGrid, Reason::NegativePrice].contains(&rejection.reason) {
            assert_eq!(rejection.order_id.as_deref(), order_id);
        }
    }
}

/// Whether some object in the JSON text has a key twice.
fn repeats_a_key(data: &[u8]) -> bool {
    serde_json::from_slice::<Repeats>(data).unwrap().0
}

struct Repeats(bool);

impl<'de> Deserialize<'de> for Repeats {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RepeatsVisitor).map(Repeats)
    }
}

struct RepeatsVisitor;

impl<'de> Visitor<'de> for RepeatsVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut keys = HashSet::new();
        let mut repeats = false;
        while let Some(key) = map.next_key::<String>()? {
            repeats |= !keys.insert(key);
            repeats |= map.next_value::<Repeats>()?.0;
        }
        Ok(repeats)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut repeats = false;
        while let Some(Repeats(r)) = seq.next_element()? {
            repeats |= r;
        }
        Ok(repeats)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// What `serde_json` reads but cannot hold in a `Value`: numbers beyond `f64`, nesting
/// beyond its recursion limit, unpaired UTF-16 surrogate escapes.
fn beyond_value(e: &serde_json::Error) -> bool {
    let message = e.to_string();
    [
        "number out of range",
        "recursion limit exceeded",
        "lone leading surrogate in hex escape",
        "unexpected end of hex escape",
    ]
    .iter()
    .any(|m| message.starts_with(m))
}

fn assert_malformed(parsed: &Result<Event, Rejection>, why: &str) {
    match parsed {
        Err(rejection) => {
            assert_eq!(rejection.reason, Reason::MalformedJson, "{why}");
            assert_eq!(rejection.order_id, None, "{why}");
        }
        Ok(event) => panic!("{why}, yet accepted as {event:?}"),
    }
}

/// What the parser promises of every event it accepts.
fn check_valid(event: &Event) {
    assert!(!event.order_id().is_empty());
    assert!(event.order_id().len() <= events::MAX_ID_BYTES);
    if let Event::Assigned { driver_id, .. } = event {
        assert!(driver_id.len() <= events::MAX_ID_BYTES);
    }
    if let Event::Created {
        pickup,
        dropoff,
        price_cents,
        ..
    } = event
    {
        assert!(pickup.x < GRID && pickup.y < GRID && dropoff.x < GRID && dropoff.y < GRID);
        assert!(*price_cents >= 0);
    }
    // Its wire encoding parses back to it.
    let wire = Object::of(event).render(Style::Compact);
    assert_eq!(events::parse(wire.as_bytes()).as_ref(), Ok(event), "{wire}");
}

/// The documented outcome for a JSON object without repeated keys: malformed when a
/// field is of the wrong type (every field the parser knows, whatever the event's type:
/// docs/delivery-stats.md) or a required one is missing (or null); then an unknown
/// `type`, an `order_id` over `MAX_ID_BYTES` (then a `driver_id` over it, once present),
/// an empty `order_id`, off-grid regions (pickup first) and a negative price.
fn expected(object: &Map<String, Value>) -> Result<Event, Reason> {
    let field = |name: &str| object.get(name).filter(|v| !v.is_null());
    let text = |name: &str| field(name).and_then(Value::as_str);
    let int = |name: &str| field(name).and_then(Value::as_i64);
    let region = |name: &str| field(name).and_then(raw_region);
    let wrong_type = ["type", "order_id", "driver_id"]
        .into_iter()
        .any(|name| field(name).is_some() && text(name).is_none())
        || ["price_cents", "created_at", "assigned_at", "completed_at"]
            .into_iter()
            .any(|name| field(name).is_some() && int(name).is_none())
        || ["pickup", "dropoff"]
            .into_iter()
            .any(|name| field(name).is_some() && region(name).is_none());
    if wrong_type {
        return Err(Reason::MalformedJson);
    }
    let kind = text("type").ok_or(Reason::MalformedJson)?;
    if ![ORDER_CREATED, ORDER_ASSIGNED, ORDER_COMPLETED].contains(&kind) {
        return Err(Reason::UnknownEventType);
    }
    if text("order_id").is_some_and(|id| id.len() > events::MAX_ID_BYTES) {
        return Err(Reason::FieldTooLong);
    }
    let order_id = text("order_id")
        .filter(|id| !id.is_empty())
        .ok_or(Reason::MalformedJson)?
        .to_string();
    match kind {
        ORDER_CREATED => {
            let (Some(pickup), Some(dropoff), Some(price_cents), Some(created_at)) = (
                region("pickup"),
                region("dropoff"),
                int("price_cents"),
                int("created_at"),
            ) else {
                return Err(Reason::MalformedJson);
            };
            let pickup = on_grid(pickup).ok_or(Reason::RegionOffGrid)?;
            let dropoff = on_grid(dropoff).ok_or(Reason::RegionOffGrid)?;
            if price_cents < 0 {
                return Err(Reason::NegativePrice);
            }
            Ok(Event::Created {
                order_id,
                pickup,
                dropoff,
                price_cents,
                created_at,
            })
        }
        ORDER_ASSIGNED => match (text("driver_id"), int("assigned_at")) {
            (Some(driver_id), _) if driver_id.len() > events::MAX_ID_BYTES => {
                Err(Reason::FieldTooLong)
            }
            (Some(driver_id), Some(assigned_at)) => Ok(Event::Assigned {
                order_id,
                driver_id: driver_id.to_string(),
                assigned_at,
            }),
            _ => Err(Reason::MalformedJson),
        },
        _ => match int("completed_at") {
            Some(completed_at) => Ok(Event::Completed {
                order_id,
                completed_at,
            }),
            None => Err(Reason::MalformedJson),
        },
    }
}

/// A region's `{"x": .., "y": ..}`, coordinates not yet checked against the grid.
fn raw_region(value: &Value) -> Option<(i64, i64)> {
    let object = value.as_object()?;
    Some((object.get("x")?.as_i64()?, object.get("y")?.as_i64()?))
}

fn on_grid((x, y): (i64, i64)) -> Option<Region> {
    let coordinate = |v: i64| u8::try_from(v).ok().filter(|&v| v < GRID);
    Some(Region {
        x: coordinate(x)?,
        y: coordinate(y)?,
    })
}

/// A JSON object as written, field by field (key, JSON text of the value), so that
/// fields can be dropped, repeated or reordered.
struct Object(Vec<(String, String)>);

/// How [`Object::render`] spells an object.
#[derive(Clone, Copy)]
enum Style {
    Compact,
    /// Whitespace around every token, and keys and string values `\u`-escaped.
    Respelled,
}

impl Object {
    /// The event in the wire schema: its type and the fields the parser reads.
    fn of(event: &Event) -> Object {
        let string = |s: &str| serde_json::to_string(s).unwrap();
        let mut fields = vec![
            ("type".to_string(), string(event.type_name())),
            ("order_id".to_string(), string(event.order_id())),
        ];
        let mut add = |key: &str, value: String| fields.push((key.to_string(), value));
        match event {
            Event::Created {
                pickup,
                dropoff,
                price_cents,
                created_at,
                ..
            } => {
                add("created_at", created_at.to_string());
                add("pickup", region_text(pickup.x, pickup.y));
                add("dropoff", region_text(dropoff.x, dropoff.y));
                add("price_cents", price_cents.to_string());
            }
            Event::Assigned {
                driver_id,
                assigned_at,
                ..
            } => {
                add("driver_id", string(driver_id));
                add("assigned_at", assigned_at.to_string());
            }
            Event::Completed { completed_at, .. } => {
                add("completed_at", completed_at.to_string());
            }
        }
        Object(fields)
    }

    fn set(&mut self, key: &str, value: String) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    fn render(&self, style: Style) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(key, value)| match style {
                Style::Compact => format!("{}:{value}", serde_json::to_string(key).unwrap()),
                Style::Respelled => format!("\n\t{} :\r{} ", escaped(key), respelled(value)),
            })
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

fn region_text(x: impl std::fmt::Display, y: impl std::fmt::Display) -> String {
    format!(r#"{{"x":{x},"y":{y}}}"#)
}

/// `s` as a JSON string with every character `\u`-escaped.
fn escaped(s: &str) -> String {
    let units: String = s
        .encode_utf16()
        .map(|unit| format!("\\u{unit:04x}"))
        .collect();
    format!("\"{units}\"")
}

/// A field's JSON text with its string values escaped (regions and numbers as they are).
fn respelled(value: &str) -> String {
    match serde_json::from_str::<Value>(value) {
        Ok(Value::String(s)) => escaped(&s),
        _ => value.to_string(),
    }
}

/// The input bytes as a source of field values, zeros once exhausted.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        first
    }

    fn bit(&mut self) -> bool {
        self.byte() & 1 == 0
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| (n << 8) | u64::from(self.byte()))
    }

    /// Up to 7 bytes, as text (invalid UTF-8 replaced).
    fn text(&mut self) -> String {
        let len = usize::from(self.byte() % 8).min(self.0.len());
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8_lossy(text).into_owned()
    }

    fn pick<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[usize::from(self.byte()) % items.len()]
    }
}

/// A valid event of kind `0..3` with its fields taken from `bytes`.
fn valid_event(kind: u8, bytes: &mut Bytes) -> Event {
    let order_id = format!("o{}", bytes.text());
    match kind {
        0 => Event::Created {
            order_id,
            pickup: Region {
                x: bytes.byte() % GRID,
                y: bytes.byte() % GRID,
            },
            dropoff: Region {
                x: bytes.byte() % GRID,
                y: bytes.byte() % GRID,
            },
            price_cents: (bytes.u64() >> 1) as i64,
            created_at: bytes.u64() as i64,
        },
        1 => Event::Assigned {
            order_id,
            driver_id: bytes.text(),
            assigned_at: bytes.u64() as i64,
        },
        _ => Event::Completed {
            order_id,
            completed_at: bytes.u64() as i64,
        },
    }
}

/// The fields the simulator adds to each type (`sim::wire`), which the parser ignores
/// or, for the ones another type requires, reads without using.
fn simulator_extras(event: &Event) -> Vec<(&'static str, String)> {
    let app = r#"{"name":"courier-app","version":"4.12.3","platform":"web"}"#.to_string();
    let trace = r#""5f0c6e1ab2d34c9e8f7a6b5c4d3e2f10""#.to_string();
    let mut extras = vec![("event_id", r#""evt-42-000000017""#.to_string())];
    extras.extend(match event {
        Event::Created { .. } => vec![
            ("customer_id", r#""cust-0012345""#.to_string()),
            ("restaurant_id", r#""rest-12-40-3""#.to_string()),
            ("items", "3".to_string()),
            ("payment_method", r#""card""#.to_string()),
        ],
        Event::Assigned { .. } => vec![
            ("driver_position", region_text(11, 39)),
            ("vehicle", r#""scooter""#.to_string()),
            ("eta_pickup_ms", "240000".to_string()),
            ("dispatcher", r#""nearest-available-driver/v3""#.to_string()),
        ],
        Event::Completed { .. } => vec![
            ("driver_id", r#""driver-003""#.to_string()),
            ("dropoff", region_text(14, 37)),
            ("distance_regions", "5".to_string()),
            ("proof_of_delivery", r#""photo""#.to_string()),
            ("customer_rating", "5".to_string()),
            ("tip_cents", "100".to_string()),
        ],
    });
    extras.extend([("app", app), ("trace_id", trace)]);
    extras
}

/// An integer the parser reads: a field, or a coordinate (`x` or `y`) of a region.
#[derive(Clone, Copy)]
enum Slot {
    Field(&'static str),
    Coordinate(&'static str, &'static str),
}

fn slots(event: &Event) -> Vec<Slot> {
    match event {
        Event::Created { .. } => vec![
            Slot::Field("price_cents"),
            Slot::Field("created_at"),
            Slot::Coordinate("pickup", "x"),
            Slot::Coordinate("pickup", "y"),
            Slot::Coordinate("dropoff", "x"),
            Slot::Coordinate("dropoff", "y"),
        ],
        Event::Assigned { .. } => vec![Slot::Field("assigned_at")],
        Event::Completed { .. } => vec![Slot::Field("completed_at")],
    }
}

/// Writes `literal` (JSON number text) into `slot`, and returns the outcome it should
/// have: `value` is what it reads as an `i64`, if it is one.
fn set_int(
    object: &mut Object,
    event: &Event,
    slot: Slot,
    literal: &str,
    value: Option<i64>,
) -> Result<Event, Reason> {
    let mut event = event.clone();
    match slot {
        Slot::Field(key) => object.set(key, literal.to_string()),
        Slot::Coordinate(key, axis) => {
            let Event::Created {
                pickup, dropoff, ..
            } = &event
            else {
                unreachable!("only order_created has regions");
            };
            let region = if key == "pickup" { pickup } else { dropoff };
            let text = if axis == "x" {
                region_text(literal, region.y)
            } else {
                region_text(region.x, literal)
            };
            object.set(key, text);
        }
    }
    let value = value.ok_or(Reason::MalformedJson)?;
    match (&mut event, slot) {
        (Event::Created { price_cents, .. }, Slot::Field("price_cents")) => {
            if value < 0 {
                return Err(Reason::NegativePrice);
            }
            *price_cents = value;
        }
        (Event::Created { created_at: t, .. }, Slot::Field(_))
        | (Event::Assigned { assigned_at: t, .. }, Slot::Field(_))
        | (
            Event::Completed {
                completed_at: t, ..
            },
            Slot::Field(_),
        ) => *t = value,
        (
            Event::Created {
                pickup, dropoff, ..
            },
            Slot::Coordinate(key, axis),
        ) => {
            let region = if key == "pickup" { pickup } else { dropoff };
            let coordinate = if axis == "x" {
                &mut region.x
            } else {
                &mut region.y
            };
            *coordinate = u8::try_from(value)
                .ok()
                .filter(|&v| v < GRID)
                .ok_or(Reason::RegionOffGrid)?;
        }
        _ => unreachable!("only order_created has regions"),
    }
    Ok(event)
}

/// Number literals around and beyond the `i64` range, with their `i64` value if any.
const NUMBERS: [(&str, Option<i64>); 16] = [
    ("0", Some(0)),
    ("-1", Some(-1)),
    ("49", Some(49)),
    ("50", Some(50)),
    ("256", Some(256)),
    ("4294967296", Some(1 << 32)),
    ("9223372036854775807", Some(i64::MAX)),
    ("-9223372036854775808", Some(i64::MIN)),
    ("9223372036854775808", None),
    ("-9223372036854775809", None),
    ("18446744073709551616", None),
    ("123456789012345678901234567890", None),
    ("1e19", None),
    ("1e400", None),
    ("-0", None), // serde_json reads it as the float -0.0
    ("12.0", None),
];

/// Values of every JSON type, for fields that expect another.
const WRONG_TYPES: [&str; 8] = [
    r#""12""#,
    "12",
    "1.5",
    "true",
    "[12,40]",
    r#"{"x":12,"y":40}"#,
    r#"["order_created"]"#,
    "{}",
];

/// Byte sequences that are not UTF-8 (a lone continuation byte, an overlong encoding,
/// an encoded surrogate...).
const NOT_UTF8: [&[u8]; 4] = [b"\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80"];

/// What may not follow a JSON text.
const TRAILING: [&[u8]; 5] = [b"x", b",", b"}", b"{}", b"\0"];

/// Mutations of a valid event: `(mutation, bytes)` gives the input and its outcome.
const MUTATIONS: u8 = 12;

fn check_mutation(selector: u8, rest: &[u8]) {
    let mut bytes = Bytes(rest);
    let event = valid_event(selector % 3, &mut bytes);
    let (input, expected) = mutate(&event, selector / 3 % MUTATIONS, &mut bytes);
    let parsed = events::parse(&input);
    assert_eq!(
        parsed.map_err(|r| r.reason),
        expected,
        "{}",
        String::from_utf8_lossy(&input)
    );
    check_bytes(&input);
}

fn mutate(event: &Event, mutation: u8, bytes: &mut Bytes) -> (Vec<u8>, Result<Event, Reason>) {
    let mut object = Object::of(event);
    let len = object.0.len();
    let malformed = Err(Reason::MalformedJson);
    let ok = Ok(event.clone());
    let (text, expected) = match mutation {
        // As the simulator writes it, fields in any order.
        0 => {
            for (key, value) in simulator_extras(event) {
                object.set(key, value);
            }
            let by = usize::from(bytes.byte()) % object.0.len();
            object.0.rotate_left(by);
            (object.render(Style::Compact), ok)
        }
        // A required field missing, or null.
        1 => {
            let at = usize::from(bytes.byte()) % len;
            if bytes.bit() {
                object.0.remove(at);
            } else {
                object.0[at].1 = "null".to_string();
            }
            (object.render(Style::Compact), malformed)
        }
        // A required field of another type.
        2 => {
            let at = usize::from(bytes.byte()) % len;
            let candidates: Vec<&str> = WRONG_TYPES
                .into_iter()
                .filter(|v| !same_type(v, &object.0[at]))
                .collect();
            object.0[at].1 = bytes.pick(&candidates).to_string();
            (object.render(Style::Compact), malformed)
        }
        // An integer at or beyond the ends of the `i64` range.
        3 => {
            let slot = *bytes.pick(&slots(event));
            let (literal, value) = *bytes.pick(&NUMBERS);
            let expected = set_int(&mut object, event, slot, literal, value);
            (object.render(Style::Compact), expected)
        }
        // A negative integer: only prices and coordinates may not be.
        4 => {
            let slot = *bytes.pick(&slots(event));
            let value = -((bytes.u64() >> 1) as i64) - 1;
            let expected = set_int(&mut object, event, slot, &value.to_string(), Some(value));
            (object.render(Style::Compact), expected)
        }
        // A region off the grid: rejected in an order_created, ignored elsewhere.
        5 => {
            let off = i64::from(GRID) + (bytes.u64() >> 2) as i64;
            match event {
                Event::Created { .. } => {
                    let slot = *bytes.pick(&slots(event)[2..]);
                    let expected = set_int(&mut object, event, slot, &off.to_string(), Some(off));
                    (object.render(Style::Compact), expected)
                }
                _ => {
                    let key = *bytes.pick(&["pickup", "dropoff", "driver_position"]);
                    object.set(key, region_text(off, bytes.byte()));
                    (object.render(Style::Compact), ok)
                }
            }
        }
        // A type other than the three.
        6 => {
            let base = bytes.pick(&[
                "order_refunded",
                "ORDER_CREATED",
                "order_created ",
                "order_assigned\u{0}",
                "",
                "order_",
                "\u{feff}order_completed",
            ]);
            let kind = format!("{base}{}", bytes.text());
            let expected = if kind == event.type_name() {
                ok
            } else if [ORDER_CREATED, ORDER_ASSIGNED, ORDER_COMPLETED].contains(&&*kind) {
                // Another known type, whose fields are missing.
                malformed
            } else {
                Err(Reason::UnknownEventType)
            };
            object.set("type", serde_json::to_string(&kind).unwrap());
            (object.render(Style::Compact), expected)
        }
        // Whitespace everywhere, keys and strings spelled with escapes.
        7 => {
            object.0.rotate_left(usize::from(bytes.byte()) % len);
            (object.render(Style::Respelled), ok)
        }
        // A field twice: ambiguous if the parser reads it, else ignored.
        8 => {
            let at = usize::from(bytes.byte()) % len;
            let repeated = if bytes.bit() {
                object.0[at].clone()
            } else {
                (object.0[at].0.clone(), bytes.pick(&WRONG_TYPES).to_string())
            };
            object.0.push(repeated);
            object.0.push(("trace_id".into(), r#""a""#.into()));
            object.0.push(("trace_id".into(), r#""b""#.into()));
            (object.render(Style::Compact), malformed)
        }
        // Deep nesting: fine in an ignored field, the wrong type in a required one.
        9 => {
            let depth = usize::from(bytes.byte()) * 8 + 1;
            let (open, close) = if bytes.bit() {
                ("[", "]")
            } else {
                (r#"{"a":"#, "}")
            };
            let nested = format!("{}0{}", open.repeat(depth), close.repeat(depth));
            if bytes.bit() {
                object.set("extra", nested);
                (object.render(Style::Compact), ok)
            } else {
                let at = usize::from(bytes.byte()) % len;
                object.0[at].1 = nested;
                (object.render(Style::Compact), malformed)
            }
        }
        // Not an object: its fields as an array (in the order the parser declares
        // them), the object in an array, the object in a string.
        10 => {
            let compact = object.render(Style::Compact);
            let text = match bytes.byte() % 3 {
                0 => {
                    let declared = [
                        "type",
                        "order_id",
                        "pickup",
                        "dropoff",
                        "price_cents",
                        "created_at",
                        "driver_id",
                        "assigned_at",
                        "completed_at",
                    ];
                    let values: Vec<&str> = declared
                        .iter()
                        .map(|name| {
                            object
                                .0
                                .iter()
                                .find(|(key, _)| key == name)
                                .map_or("null", |(_, value)| value.as_str())
                        })
                        .collect();
                    format!("[{}]", values.join(","))
                }
                1 => format!("[{compact}]"),
                _ => serde_json::to_string(&compact).unwrap(),
            };
            (text, malformed)
        }
        // Broken bytes: cut short, invalid UTF-8 in an ignored string, trailing junk.
        _ => {
            let compact = object.render(Style::Compact);
            let mut raw = compact.clone().into_bytes();
            match bytes.byte() % 3 {
                0 => raw.truncate(usize::from(bytes.byte()) % compact.len()),
                1 => {
                    raw.pop();
                    raw.extend_from_slice(br#","note":"x"#);
                    raw.extend_from_slice(bytes.pick::<&[u8]>(&NOT_UTF8));
                    raw.extend_from_slice(br#""}"#);
                }
                _ => raw.extend_from_slice(bytes.pick::<&[u8]>(&TRAILING)),
            }
            return (raw, malformed);
        }
    };
    (text.into_bytes(), expected)
}

/// Whether `value` (JSON text) has the type `field`'s value needs.
fn same_type(value: &str, (key, _): &(String, String)) -> bool {
    let value: Value = serde_json::from_str(value).unwrap();
    match key.as_str() {
        "type" | "order_id" | "driver_id" => value.is_string(),
        "pickup" | "dropoff" => raw_region(&value).is_some(),
        _ => value.is_i64(),
    }
}
