//! The Splunk app (`splunk-app/ringcentral_audit`) agrees with what the forwarder sends.
//!
//! The events are the forwarder's own: simulator records covering every action id it knows, turned
//! into HEC envelopes by the real [`Transformer`]. The app side is read from its files: props,
//! transforms, the action lookup, eventtypes, tags, macros, saved searches and the Dashboard
//! Studio views. Then:
//!
//! - every JSON path props.conf reads (field aliases, calculated fields, the lookup input, the
//!   timestamp prefix) is in every event as a scalar, and every JSON path a search, macro,
//!   eventtype or dashboard names is in some event, never with another shape;
//! - every `rc_*` field a search names is defined by the app or indexed by the forwarder;
//! - the lookup, applied with Splunk's WILDCARD first-match semantics (the binary's own
//!   `ActionLookup::first_match`), puts every simulator action id in the intended CIM dataset,
//!   through the eventtypes and tags, never in two data models; so does a table of plausible
//!   real-world ids written independently of the lookup (RingCentral publishes only four ids, so
//!   the simulator's other ids alone would make this test circular), where any id nobody can
//!   place must be `unknown`: in no data model, never a success;
//! - every lookup row carries CIM allowed values (Authentication and Change `action`, Change
//!   `status`) for the data model its category lands in;
//! - `user` is the actor for configuration changes and the account acted on for account events;
//!   the HEC indexed fields are in fields.conf; the alerts see late events and count `dc(id)`;
//! - every value a search compares a lookup field with (`action=failure`...) is one the lookup
//!   gives real events; every macro, eventtype and dashboard token used is defined;
//! - the sourcetype and the `source` format agree with the forwarder's;
//! - app.conf and app.manifest carry the crate version.
//!
//! A change on either side that breaks the other fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDateTime, Utc};
use rc_audit_hec::commands::actions::{ActionLookup, SHIPPED_LOOKUP, UNKNOWN, wildcard_match};
use rc_audit_hec::config::{Config, DEFAULT_SOURCETYPE, LoadEnv};
use rc_audit_hec::sim::records::{ACTION_IDS, PUBLISHED_ACTION_IDS, generate_records};
use rc_audit_hec::transform::{
    HEARTBEAT_SOURCETYPE, INTERNAL_SOURCE, RECONCILIATION_SOURCETYPE, Transformer, inspect_record,
    internal_event,
};
use serde_json::Value;
use serde_json::value::RawValue;

const APP: &str = "ringcentral_audit";

// ------------------------------------------------------------------------------------------------
// The forwarder's side: HEC envelopes from simulator records.

/// HEC envelopes (`{time, host, source, sourcetype, event, fields}`) for simulator records that
/// cover every action id in `ACTION_IDS`, built with the forwarder's default configuration.
static EVENTS: LazyLock<Vec<Value>> = LazyLock::new(|| {
    let toml = r#"
        [[accounts]]
        name = "acme"
        client_id = "c"
        client_secret = "s"
        jwt = "j"
        [hec]
        url = "https://splunk.example.com:8088"
        token = "t"
        host = "fwd1"
    "#;
    let config = Config::from_toml_str(toml, &LoadEnv::default()).expect("test config is valid");
    let transformer = Transformer::new(&config.envelope_settings(), &config.accounts[0]);
    let at = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .expect("valid time")
            .with_timezone(&Utc)
    };
    let records = generate_records(
        11,
        "403858014008",
        "Acme Corp",
        4000,
        at("2024-08-06T00:00:00Z"),
        at("2024-08-08T00:00:00Z"),
    );
    let events: Vec<Value> = records
        .iter()
        .map(|record| {
            let raw = RawValue::from_string(record.to_string()).expect("records are JSON");
            let meta = inspect_record(&raw);
            serde_json::from_slice(&transformer.event(&raw, &meta, 0)).expect("events are JSON")
        })
        .collect();
    let seen: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["event"]["actionId"].as_str())
        .collect();
    for id in ACTION_IDS {
        assert!(
            seen.contains(id),
            "the simulator records used here do not cover {id}: generate more"
        );
    }
    events
});

/// The forwarder's own events, as it sends them: heartbeats made by the real
/// `heartbeat::beat` (with every optional field set, and once with none), and reconciliation
/// results made by the real `reconcile::event_body` (the issue 12 contract: `account`,
/// `period_start`, `period_end` as RFC 3339, `ringcentral_count`, `forwarded_count`, `status`,
/// `recovered`, `reason`, and `checked_at`, which the completeness macro reads), all through the
/// real `transform::internal_event`.
static INTERNAL_EVENTS: LazyLock<Vec<Value>> = LazyLock::new(|| {
    use rc_audit_hec::heartbeat::beat;
    use rc_audit_hec::spool::Status;
    use rc_audit_hec::telemetry::{Component, Health, State, Stats};
    let toml = r#"
        [[accounts]]
        name = "acme"
        client_id = "c"
        client_secret = "s"
        jwt = "j"
        [[accounts]]
        name = "beta"
        client_id = "c2"
        client_secret = "s"
        jwt = "j"
        [hec]
        url = "https://splunk.example.com:8088"
        token = "t"
        host = "fwd1"
    "#;
    let config = Config::from_toml_str(toml, &LoadEnv::default()).expect("test config is valid");
    let now = 1_722_988_800_000; // 2024-08-07T00:00:00Z
    let (stats, health) = (Stats::default(), Health::default());
    let quiet = beat(&config, &stats, &health, &Status::default(), now);
    stats
        .account("acme")
        .last_poll_ms
        .store(now - 1_000, std::sync::atomic::Ordering::Relaxed);
    stats
        .last_delivery_ms
        .store(now - 2_000, std::sync::atomic::Ordering::Relaxed);
    health.set(&Component::Account("acme".into()), State::Ok, None);
    health.set(
        &Component::Account("beta".into()),
        State::Failing,
        Some("RingCentral refused the credentials (401)".into()),
    );
    health.set(
        &Component::Hec,
        State::Degraded,
        Some("HEC answered 503".into()),
    );
    let status = Status {
        depth: 3,
        oldest_spooled_ms: Some(now - 60_000),
        dead_letters: 1,
        cursors: vec![
            ("acme".into(), now - 90_000),
            ("beta".into(), now - 9_000_000),
        ],
        ..Status::default()
    };
    let busy = beat(&config, &stats, &health, &status, now);
    let mut out = Vec::new();
    for b in [quiet, busy] {
        let event = serde_json::to_value(&b).expect("a heartbeat is JSON");
        let bytes = internal_event(
            &config.envelope_settings(),
            None,
            HEARTBEAT_SOURCETYPE,
            now,
            &event,
        );
        out.push(serde_json::from_slice(&bytes).expect("envelope"));
    }
    // Reconciliation results as the poller makes them: `reconcile::verdict` and
    // `reconcile::event_body` (complete; repaired with `recovered`; short with `reason`).
    for (before, after) in [(2000, None), (1998, Some(2000)), (1997, Some(1997))] {
        use rc_audit_hec::reconcile::{Count, Period, event_body, verdict};
        let period = Period {
            start_ms: now - 86_400_000,
            end_ms: now,
        };
        let count = Count {
            total: 2000,
            capped: false,
        };
        let event = event_body(&verdict("acme", period, count, before, after, 0, now));
        let bytes = internal_event(
            &config.envelope_settings(),
            Some(&config.accounts[0]),
            RECONCILIATION_SOURCETYPE,
            now + 7_200_000,
            &event,
        );
        out.push(serde_json::from_slice(&bytes).expect("envelope"));
    }
    out
});

/// The forwarder's sourcetypes: records, heartbeats, reconciliation results.
const SOURCETYPES: [&str; 3] = [
    DEFAULT_SOURCETYPE,
    HEARTBEAT_SOURCETYPE,
    RECONCILIATION_SOURCETYPE,
];

/// The macros that select the forwarder's own events (directly or through another).
const INTERNAL_MACROS: [&str; 3] = [
    "ringcentral_audit_heartbeat",
    "ringcentral_audit_reconciliation",
    "ringcentral_audit_completeness",
];

/// Whether an SPL text reads the forwarder's own events.
fn reads_internal(name: &str, tokens: &[Tok]) -> bool {
    INTERNAL_MACROS
        .iter()
        .any(|m| name == format!("macros.conf [{m}]"))
        || macros_used(tokens)
            .iter()
            .any(|m| INTERNAL_MACROS.contains(&m.as_str()))
}

/// Whether an SPL text reads audit records.
fn reads_records(tokens: &[Tok]) -> bool {
    let direct = comparisons(tokens)
        .iter()
        .any(|(f, v)| f == "sourcetype" && v == DEFAULT_SOURCETYPE);
    let through = macros_used(tokens)
        .iter()
        .any(|m| m == "ringcentral_audit" || m == "ringcentral_audit_completeness");
    direct || through
}

/// The audit records inside the envelopes (what Splunk extracts JSON fields from).
fn records() -> impl Iterator<Item = &'static Value> {
    EVENTS.iter().map(|e| &e["event"])
}

/// The values at a Splunk JSON path (`a.b`, `a{}.b`: `{}` iterates an array), or why the record's
/// shape does not give Splunk such a field. A missing key gives no values.
fn resolve<'a>(v: &'a Value, path: &str) -> Result<Vec<&'a Value>, String> {
    let mut current = vec![v];
    for segment in path.split('.') {
        let (name, array) = match segment.strip_suffix("{}") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        let mut next = Vec::new();
        for value in current {
            let Some(obj) = value.as_object() else {
                return Err(format!(
                    "{path}: `{name}` is read from a {value}, not an object"
                ));
            };
            match (obj.get(name), array) {
                (None, _) => {}
                (Some(Value::Array(items)), true) => next.extend(items),
                (Some(other), true) => {
                    return Err(format!("{path}: `{name}` is {other}, not an array"));
                }
                (Some(Value::Array(_)), false) => {
                    return Err(format!(
                        "{path}: `{name}` is an array, Splunk names it `{name}{{}}`"
                    ));
                }
                (Some(other), false) => next.push(other),
            }
        }
        current = next;
    }
    for leaf in &current {
        if leaf.is_object() || leaf.is_array() {
            return Err(format!(
                "{path} is {leaf}, not a scalar: Splunk gives no such field"
            ));
        }
    }
    Ok(current)
}

// ------------------------------------------------------------------------------------------------
// The app's side: files and small parsers for .conf, CSV and SPL.

fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("splunk-app")
        .join(APP)
}

fn read(rel: &str) -> String {
    let path = app_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A .conf file: stanzas in file order, each with its keys in order. Keys before the first
/// stanza go to a stanza named "".
struct Conf {
    file: String,
    stanzas: Vec<(String, Vec<(String, String)>)>,
}

impl Conf {
    fn load(rel: &str) -> Conf {
        Conf::parse(rel, &read(rel))
    }

    /// Comment and blank lines are skipped; a value continues on the next line after a trailing
    /// backslash. Duplicate stanzas or keys (Splunk would silently keep one) are errors.
    fn parse(file: &str, text: &str) -> Conf {
        let mut stanzas: Vec<(String, Vec<(String, String)>)> = Vec::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                assert!(
                    stanzas.iter().all(|(n, _)| n != name),
                    "{file}: stanza [{name}] twice"
                );
                stanzas.push((name.to_string(), Vec::new()));
                continue;
            }
            let mut logical = trimmed.to_string();
            while logical.ends_with('\\') {
                logical.pop();
                logical.push('\n');
                logical.push_str(lines.next().unwrap_or_default().trim());
            }
            let (key, value) = logical
                .split_once('=')
                .unwrap_or_else(|| panic!("{file}: not `key = value`: {logical}"));
            if stanzas.is_empty() {
                stanzas.push((String::new(), Vec::new()));
            }
            let (name, keys) = stanzas.last_mut().expect("a stanza");
            let key = key.trim().to_string();
            assert!(
                keys.iter().all(|(k, _)| *k != key),
                "{file}: [{name}] sets {key} twice"
            );
            keys.push((key, value.trim().to_string()));
        }
        Conf {
            file: file.to_string(),
            stanzas,
        }
    }

    fn stanza(&self, name: &str) -> &[(String, String)] {
        self.stanzas
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, keys)| keys.as_slice())
            .unwrap_or_else(|| panic!("{}: no stanza [{name}]", self.file))
    }

    fn get(&self, stanza: &str, key: &str) -> Option<&str> {
        self.stanza(stanza)
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, stanza: &str, key: &str) -> &str {
        self.get(stanza, key)
            .unwrap_or_else(|| panic!("{}: [{stanza}] has no {key}", self.file))
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.stanzas.iter().map(|(n, _)| n.as_str())
    }
}

/// A token of SPL (or of an eval expression).
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word: command, function, field name, value, keyword, number.
    Word(String),
    /// A double-quoted string.
    Str(String),
    /// A single-quoted field name (`'target.name'`).
    Field(String),
    /// A macro call, between backticks.
    Macro(String),
    /// A dashboard token, between dollar signs (`user|s`).
    Token(String),
    /// `=`, `==`, `!=`, `<`, `<=`, `>`, `>=`.
    Op(String),
    /// Any other character.
    Punct(char),
}

fn tokenize(spl: &str) -> Vec<Tok> {
    let c: Vec<char> = spl.chars().collect();
    let delimited = |start: usize, close: char| -> (String, usize) {
        let mut text = String::new();
        let mut j = start + 1;
        while j < c.len() && c[j] != close {
            if c[j] == '\\' && close == '"' && j + 1 < c.len() {
                text.push(c[j + 1]);
                j += 2;
                continue;
            }
            text.push(c[j]);
            j += 1;
        }
        assert!(j < c.len(), "unterminated {close} in: {spl}");
        (text, j + 1)
    };
    let is_word = |ch: char| ch.is_alphanumeric() || "_.{}*@%:".contains(ch);
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        match ch {
            _ if ch.is_whitespace() => i += 1,
            '"' | '\'' | '`' | '$' => {
                let (text, next) = delimited(i, ch);
                out.push(match ch {
                    '"' => Tok::Str(text),
                    '\'' => Tok::Field(text),
                    '`' => Tok::Macro(text),
                    _ => Tok::Token(text),
                });
                i = next;
            }
            '=' | '!' | '<' | '>' => {
                let mut op = ch.to_string();
                if c.get(i + 1) == Some(&'=') {
                    op.push('=');
                    i += 1;
                }
                i += 1;
                out.push(if op == "!" {
                    Tok::Punct('!')
                } else {
                    Tok::Op(op)
                });
            }
            _ if is_word(ch) => {
                let start = i;
                while i < c.len() && is_word(c[i]) {
                    i += 1;
                }
                out.push(Tok::Word(c[start..i].iter().collect()));
            }
            _ => {
                out.push(Tok::Punct(ch));
                i += 1;
            }
        }
    }
    out
}

/// A bare word that can only be a RingCentral JSON path: dotted, with `{}`, or camelCase
/// (Splunk and CIM field names are snake_case; RingCentral's are camelCase).
fn is_json_path(word: &str) -> bool {
    let mut chars = word.chars();
    let first = chars.next().unwrap_or(' ');
    first.is_ascii_alphabetic()
        && (word.contains('.')
            || word.contains("{}")
            || (first.is_ascii_lowercase() && word.chars().any(|c| c.is_ascii_uppercase())))
}

/// The JSON paths an SPL text (or eval expression) reads.
fn json_paths(tokens: &[Tok]) -> BTreeSet<String> {
    tokens
        .iter()
        .filter_map(|t| match t {
            Tok::Field(f) if is_json_path(f) => Some(f.clone()),
            Tok::Word(w) if is_json_path(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

/// `field = value` comparisons in SPL (value unquoted or double-quoted). Assignments of `eval`
/// (`| eval x = ...`, `..., y = ...` outside parentheses) are not comparisons and are skipped.
fn comparisons(tokens: &[Tok]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut command = String::new();
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Tok::Punct('|') | Tok::Punct('[') if depth == 0 => command.clear(),
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => depth = depth.saturating_sub(1),
            Tok::Word(w) if command.is_empty() => command = w.to_ascii_lowercase(),
            _ => {}
        }
        let Some(window) = tokens.get(i..i + 3) else {
            break;
        };
        if let [Tok::Word(f), Tok::Op(op), Tok::Word(v) | Tok::Str(v)] = window
            && (op == "=" || op == "==")
        {
            let after_eval_or_comma = match i.checked_sub(1).map(|j| &tokens[j]) {
                Some(Tok::Word(w)) => w.eq_ignore_ascii_case("eval"),
                Some(Tok::Punct(',')) => true,
                _ => false,
            };
            let assignment = command == "eval" && op == "=" && depth == 0 && after_eval_or_comma;
            if !assignment {
                out.push((f.clone(), v.clone()));
            }
        }
    }
    out
}

fn macros_used(tokens: &[Tok]) -> BTreeSet<String> {
    tokens
        .iter()
        .filter_map(|t| match t {
            Tok::Macro(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// The app, loaded once.

struct App {
    props: Conf,
    transforms: Conf,
    eventtypes: Conf,
    tags: Conf,
    macros: Conf,
    savedsearches: Conf,
    /// (file name, definition JSON)
    dashboards: Vec<(String, Value)>,
    lookup: ActionLookup,
    /// fields.conf
    fields_conf: Conf,
}

static APP_FILES: LazyLock<App> = LazyLock::new(|| {
    let views = app_dir().join("default/data/ui/views");
    let mut dashboards = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&views)
        .expect("views directory")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let xml = std::fs::read_to_string(&path).expect("view file");
        assert!(
            xml.contains(r#"<dashboard version="2""#),
            "{name}: not a Dashboard Studio view"
        );
        let start = xml.find("<![CDATA[").expect("definition CDATA") + "<![CDATA[".len();
        let end = xml[start..].find("]]>").expect("end of CDATA") + start;
        let definition: Value = serde_json::from_str(&xml[start..end])
            .unwrap_or_else(|e| panic!("{name}: definition is not JSON: {e}"));
        dashboards.push((name, definition));
    }
    let transforms = Conf::load("default/transforms.conf");
    let filename = transforms
        .require("ringcentral_audit_actions", "filename")
        .to_string();
    App {
        props: Conf::load("default/props.conf"),
        transforms,
        eventtypes: Conf::load("default/eventtypes.conf"),
        tags: Conf::load("default/tags.conf"),
        macros: Conf::load("default/macros.conf"),
        savedsearches: Conf::load("default/savedsearches.conf"),
        dashboards,
        lookup: ActionLookup::parse(&filename, &read(&format!("lookups/{filename}")))
            .expect("the lookup CSV parses"),
        fields_conf: Conf::load("default/fields.conf"),
    }
});

impl App {
    /// Every SPL text of the app, named: saved searches, macro definitions, eventtype searches,
    /// dashboard queries.
    fn spl(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for name in self.savedsearches.names() {
            if let Some(s) = self.savedsearches.get(name, "search") {
                out.push((format!("savedsearches.conf [{name}]"), s.to_string()));
            }
        }
        for name in self.macros.names() {
            out.push((
                format!("macros.conf [{name}]"),
                self.macros.require(name, "definition").to_string(),
            ));
        }
        for name in self.eventtypes.names() {
            out.push((
                format!("eventtypes.conf [{name}]"),
                self.eventtypes.require(name, "search").to_string(),
            ));
        }
        for (file, def) in &self.dashboards {
            for (id, ds) in def["dataSources"].as_object().expect("dataSources") {
                if let Some(q) = ds["options"]["query"].as_str() {
                    out.push((format!("{file} {id}"), q.to_string()));
                }
            }
        }
        out
    }

    /// The one props stanza: the forwarder's sourcetype.
    fn props_stanza(&self) -> &[(String, String)] {
        self.props.stanza(DEFAULT_SOURCETYPE)
    }

    /// The action lookup as props.conf invokes it: (transform name, event field it matches on,
    /// output fields).
    fn lookup_call(&self) -> (String, String, Vec<String>) {
        let lookups: Vec<&String> = self
            .props_stanza()
            .iter()
            .filter(|(k, _)| k.starts_with("LOOKUP-"))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(lookups.len(), 1, "one LOOKUP- in props.conf");
        let words: Vec<&str> = lookups[0].split_whitespace().collect();
        let output_at = words
            .iter()
            .position(|w| w.eq_ignore_ascii_case("OUTPUT"))
            .expect("LOOKUP- with OUTPUT (not OUTPUTNEW: the lookup must set every field)");
        let table = words[0].to_string();
        let inputs = &words[1..output_at];
        assert_eq!(inputs.len(), 3, "LOOKUP- input is `<column> AS <field>`");
        assert!(inputs[1].eq_ignore_ascii_case("AS"));
        assert_eq!(
            inputs[0], "vendor_action",
            "the lookup matches on its vendor_action column"
        );
        let outputs = words[output_at + 1..]
            .iter()
            .map(|s| s.to_string())
            .collect();
        (table, inputs[2].to_string(), outputs)
    }

    /// The first lookup row matching `action_id`, as Splunk's WILDCARD lookup with
    /// `max_matches = 1` picks it: rows in file order, first match wins. This is the binary's
    /// own function (`rc-audit-hec actions` uses it), so the command and the app cannot differ.
    fn lookup_row(&self, action_id: &str) -> Option<&BTreeMap<String, String>> {
        assert_eq!(
            self.transforms
                .get("ringcentral_audit_actions", "case_sensitive_match"),
            Some("false"),
            "ActionLookup::first_match is case-insensitive, as the transform must be"
        );
        self.lookup.first_match(action_id).map(|r| &r.0)
    }

    /// The search-time fields of an event as far as eventtypes need them: the envelope's
    /// sourcetype plus the lookup's output for its actionId.
    fn fields(&self, envelope: &Value) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        if let Some(st) = envelope["sourcetype"].as_str() {
            fields.insert("sourcetype".to_string(), st.to_string());
        }
        let (_, input, outputs) = self.lookup_call();
        let key = resolve(&envelope["event"], &input)
            .ok()
            .and_then(|v| v.first().and_then(|v| v.as_str()).map(str::to_string));
        if let Some(row) = key.as_deref().and_then(|k| self.lookup_row(k)) {
            for out in outputs {
                let value = &row[&out];
                if !value.is_empty() {
                    fields.insert(out, value.clone());
                }
            }
        }
        fields
    }

    /// The eventtypes whose search matches `fields`. Eventtype searches here must be plain
    /// `field=value` terms (ANDed), so that this test can evaluate them.
    fn eventtypes_of(&self, fields: &BTreeMap<String, String>) -> Vec<String> {
        self.eventtypes
            .names()
            .filter(|name| {
                let search = self.eventtypes.require(name, "search");
                let tokens = tokenize(search);
                let terms = comparisons(&tokens);
                assert_eq!(
                    terms.len() * 3,
                    tokens.len(),
                    "eventtype {name}: only `field=value` terms are supported here: {search}"
                );
                terms.iter().all(|(f, v)| {
                    fields
                        .get(f)
                        .is_some_and(|have| wildcard_match(v, have, false))
                })
            })
            .map(str::to_string)
            .collect()
    }

    fn tags_of(&self, eventtype: &str) -> BTreeSet<String> {
        self.tags
            .stanza(&format!("eventtype={eventtype}"))
            .iter()
            .filter(|(_, v)| v == "enabled")
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The CIM datasets an event with `fields` lands in, from its tags and the datasets'
    /// constraints (Authentication: tag=authentication; Change: tag=change; Account_Management:
    /// tag=account under Change; Account_Lockouts: result=lockout under Account_Management).
    fn datasets(&self, fields: &BTreeMap<String, String>) -> BTreeSet<&'static str> {
        let tags: BTreeSet<String> = self
            .eventtypes_of(fields)
            .iter()
            .flat_map(|et| self.tags_of(et))
            .collect();
        let mut out = BTreeSet::new();
        if tags.contains("authentication") {
            out.insert("Authentication");
        }
        if tags.contains("change") {
            out.insert("Change");
            if tags.contains("account") {
                out.insert("Change.Account_Management");
                if fields.get("result").map(String::as_str) == Some("lockout") {
                    out.insert("Change.Account_Management.Account_Lockouts");
                }
            }
        }
        out
    }

    /// Fields props.conf defines (aliases, calculated fields, lookup outputs).
    fn defined_fields(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (key, value) in self.props_stanza() {
            if let Some(name) = key.strip_prefix("EVAL-") {
                out.insert(name.to_string());
            } else if key.starts_with("FIELDALIAS-") {
                let words: Vec<&str> = value.split_whitespace().collect();
                for pair in words.chunks(3) {
                    out.insert(pair[2].to_string());
                }
            }
        }
        out.extend(self.lookup_call().2);
        out
    }
}

// ------------------------------------------------------------------------------------------------
// What the app is meant to do with each action id.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intended {
    FailedLogin,
    SuccessfulLogin,
    Lockout,
    AccountManagement,
    Configuration,
    /// A logout: its own category, in no data model.
    Session,
    /// An id the lookup cannot place: `rc_category=unknown`, no tags, never a success.
    Unknown,
}

use Intended::*;

/// The intended category of each simulator action id (issue 4). The simulator's ids other than
/// the four RingCentral published are invented; see `PUBLISHED_ACTION_IDS`.
fn intended(action_id: &str) -> Intended {
    match action_id {
        "LOGIN_SUCCESSFULLY" => SuccessfulLogin,
        id if id.starts_with("LOGIN_FAILED") => FailedLogin,
        "ACCOUNT_LOCKED" | "USER_LOCKED_OUT" => Lockout,
        "LOGOUT" => Session,
        "CHANGE_USER_ROLE" | "CREATE_USER" | "DELETE_USER" | "ENABLE_USER" | "DISABLE_USER"
        | "CHANGE_SECRET_INFO" | "CHANGE_USER_INFO" => AccountManagement,
        _ => Configuration,
    }
}

/// Plausible real-world ids (RingCentral publishes none for failures, lockouts, MFA, resets) and
/// the category each must get: the issue's examples of wrong filing, their siblings and
/// negations, policy and settings edits that mention LOCK or FAIL, MFA, suspension, password
/// reset, logout. Safety rule: an id that may be a failure or lockout is never filed as a
/// success or as a successful change; an id nothing places is `Unknown`.
const REAL_WORLD_IDS: &[(&str, Intended)] = &[
    // The four published ids.
    ("LOGIN_SUCCESSFULLY", SuccessfulLogin),
    ("CHANGE_USER_ROLE", AccountManagement),
    ("CHANGE_SECRET_INFO", AccountManagement),
    ("CHANGE_USER_INFO", AccountManagement),
    // Defect 1: negations of success are failures.
    ("LOGIN_UNSUCCESSFULLY", FailedLogin),
    ("LOGIN_UNSUCCESSFUL", FailedLogin),
    ("LOGIN_NOT_SUCCESSFUL", FailedLogin),
    ("LOGIN_NON_SUCCESSFUL", FailedLogin),
    ("UNSUCCESSFUL_LOGIN", FailedLogin),
    ("login_unsuccessfully", FailedLogin),
    ("LOGIN_SUCCESS", SuccessfulLogin),
    ("USER_LOGIN_SUCCESSFUL", SuccessfulLogin),
    // Defect 2: failures, errors and locks under names nobody published.
    ("INVALID_PASSWORD", FailedLogin),
    ("WRONG_PASSWORD", FailedLogin),
    ("INCORRECT_PASSWORD", FailedLogin),
    ("MFA_FAILED", FailedLogin),
    ("FAILED_MFA_CHALLENGE", FailedLogin),
    ("2FA_FAILED", FailedLogin),
    ("AUTHENTICATION_ERROR", FailedLogin),
    ("AUTHENTICATION_FAILED", FailedLogin),
    ("FAILED_AUTHENTICATION", FailedLogin),
    ("LOGIN_ERROR", FailedLogin),
    ("LOGIN_DENIED", FailedLogin),
    ("LOGIN_REJECTED", FailedLogin),
    ("LOGIN_BLOCKED", FailedLogin),
    ("USER_LOGIN_FAILED", FailedLogin),
    ("FAILED_LOGIN_ATTEMPT", FailedLogin),
    ("login_failed_mfa", FailedLogin),
    ("SIGN_IN_FAILED", FailedLogin),
    ("INVALID_CREDENTIALS", FailedLogin),
    ("ACCOUNT_LOCK", Lockout),
    ("ACCOUNT_LOCKED", Lockout),
    ("USER_LOCKED", Lockout),
    ("USER_LOCKED_OUT", Lockout),
    ("EXTENSION_LOCKED", Lockout),
    ("USER_LOCKOUT", Lockout),
    ("LOCK_USER", Lockout),
    // Defect 3: *BLOCK* no longer hides lockouts...
    ("USER_BLOCKED", Lockout),
    ("ACCOUNT_BLOCKED", Lockout),
    // ...and policy, settings and limit edits are configuration, not lockouts or failures.
    ("CHANGE_LOCKOUT_POLICY", Configuration),
    ("UPDATE_ACCOUNT_LOCKOUT_SETTINGS", Configuration),
    ("LOCK_SETTINGS", Configuration),
    ("CHANGE_LOCKED_SETTINGS", Configuration),
    ("CHANGE_FAILED_LOGIN_ATTEMPTS", Configuration),
    ("CHANGE_LOGIN_FAILURE_LIMIT", Configuration),
    ("CHANGE_PASSWORD_POLICY", Configuration),
    ("UPDATE_PASSWORD_POLICIES", Configuration),
    ("CHANGE_MFA_SETTINGS", Configuration),
    ("SET_LOGIN_ATTEMPT_THRESHOLD", Configuration),
    ("CHANGE_CALL_BLOCKING", Configuration),
    ("ADD_BLOCKED_NUMBER", Configuration),
    ("CHANGE_CLOCK_FORMAT", Configuration),
    // Unlocks, resets and user management.
    ("UNLOCK_USER", AccountManagement),
    ("USER_UNLOCKED", AccountManagement),
    ("RESET_PASSWORD", AccountManagement),
    ("PASSWORD_RESET", AccountManagement),
    ("ADMIN_RESET_PASSWORD", AccountManagement),
    ("CHANGE_PASSWORD", AccountManagement),
    ("CREATE_USER", AccountManagement),
    ("DELETE_USER", AccountManagement),
    ("ASSIGN_ROLE", AccountManagement),
    // A change that failed is not a successful change.
    ("CHANGE_PASSWORD_FAILED", Unknown),
    ("PASSWORD_RESET_FAILED", Unknown),
    ("DELETE_USER_FAILED", Unknown),
    ("CREATE_USER_ERROR", Unknown),
    ("CHANGE_USER_ROLE_DENIED", Unknown),
    ("UPDATE_DEVICE_UNSUCCESSFUL", Unknown),
    // Defect 4: logouts are sessions, not changes.
    ("LOGOUT", Session),
    ("USER_LOGOUT", Session),
    ("LOGOFF", Session),
    ("SIGN_OUT", Session),
    // Suspension, MFA enrolment and anything else nobody published: unknown, not a change.
    ("USER_SUSPENDED", Unknown),
    ("SUSPEND_USER", Unknown),
    ("MFA_ENROLLED", Unknown),
    ("MFA_CHALLENGE_SENT", Unknown),
    ("UNBLOCK_USER", Unknown),
    ("SOME_FUTURE_ACTION", Unknown),
    ("LOGIN", Unknown),
    ("", Unknown),
    // Configuration by verb.
    ("CHANGE_CALL_HANDLING", Configuration),
    ("ADD_PHONE_NUMBER", Configuration),
    ("REMOVE_PHONE_NUMBER", Configuration),
    ("CREATE_SITE", Configuration),
    ("UPDATE_IVR_MENU", Configuration),
];

/// CIM allowed values (Splunk_SA_CIM data models): Authentication `action`, Change `action` and
/// `status`.
const CIM_AUTHENTICATION_ACTIONS: &[&str] = &["success", "failure", "pending", "error"];
const CIM_CHANGE_ACTIONS: &[&str] = &[
    "acl_modified",
    "cleared",
    "created",
    "deleted",
    "modified",
    "read",
    "stopped",
    "updated",
];
const CIM_CHANGE_STATUS: &[&str] = &["success", "failure"];

/// Checks the CIM fields and datasets an event with `fields` gets, for `what` intended category.
fn check_category(app: &App, id: &str, what: Intended, fields: &BTreeMap<String, String>) {
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    let datasets = app.datasets(fields);
    let eventtypes = app.eventtypes_of(fields);
    let tagged = !matches!(what, Session | Unknown);
    assert_eq!(
        eventtypes.len(),
        usize::from(tagged),
        "{id}: eventtypes {eventtypes:?} (intended {what:?}; fields {fields:?})"
    );
    let change_columns = ["status", "result", "change_type", "object_category"];
    let expect: &[&str] = match what {
        FailedLogin | SuccessfulLogin => {
            let action = if what == FailedLogin {
                "failure"
            } else {
                "success"
            };
            assert_eq!(get("action"), action, "{id}: action");
            assert_eq!(get("rc_category"), "authentication", "{id}");
            for c in change_columns {
                assert_eq!(
                    get(c),
                    "",
                    "{id}: a login leaves the Change field {c} empty"
                );
            }
            &["Authentication"]
        }
        Lockout => {
            assert_eq!(
                (
                    get("action"),
                    get("result"),
                    get("status"),
                    get("change_type"),
                    get("object_category")
                ),
                ("modified", "lockout", "success", "AAA", "user"),
                "{id}: lockout fields (action=modified: lockout is no CIM Change action)"
            );
            &[
                "Change",
                "Change.Account_Management",
                "Change.Account_Management.Account_Lockouts",
            ]
        }
        AccountManagement => {
            assert!(
                ["created", "deleted", "modified"].contains(&get("action")),
                "{id}: action {}",
                get("action")
            );
            assert_eq!(
                (
                    get("status"),
                    get("change_type"),
                    get("object_category"),
                    get("result")
                ),
                ("success", "AAA", "user", ""),
                "{id}: account management fields"
            );
            &["Change", "Change.Account_Management"]
        }
        Configuration => {
            assert!(
                ["created", "deleted", "modified"].contains(&get("action")),
                "{id}: action {}",
                get("action")
            );
            assert_eq!(
                (get("status"), get("change_type"), get("result")),
                ("success", "configuration", ""),
                "{id}: configuration change fields"
            );
            assert!(!get("object_category").is_empty(), "{id}: object_category");
            &["Change"]
        }
        Session | Unknown => {
            let category = if what == Session {
                "session"
            } else {
                "unknown"
            };
            assert_eq!(get("rc_category"), category, "{id}: rc_category");
            for c in [
                "action",
                "status",
                "result",
                "change_type",
                "object_category",
            ] {
                assert_eq!(
                    get(c),
                    "",
                    "{id}: {category} leaves {c} empty (never a success)"
                );
            }
            &[]
        }
    };
    assert!(!get("signature").is_empty(), "{id}: signature");
    assert_eq!(
        datasets,
        expect.iter().copied().collect(),
        "{id}: CIM datasets (intended {what:?}; fields {fields:?})"
    );
}

/// An event for `id`: the first simulator envelope with its actionId replaced.
fn envelope_with(id: &str) -> Value {
    let mut envelope = EVENTS[0].clone();
    envelope["event"]["actionId"] = Value::from(id);
    envelope
}

// ------------------------------------------------------------------------------------------------
// Tests.

#[test]
fn the_sourcetype_and_source_are_the_forwarders() {
    let app = &*APP_FILES;
    let stanzas: Vec<&str> = app.props.names().collect();
    assert_eq!(
        stanzas, SOURCETYPES,
        "props.conf defines the forwarder's sourcetypes, and only them"
    );
    for e in EVENTS.iter() {
        assert_eq!(e["sourcetype"], DEFAULT_SOURCETYPE);
    }
    for e in INTERNAL_EVENTS.iter() {
        assert!(SOURCETYPES[1..].contains(&e["sourcetype"].as_str().expect("sourcetype")));
        assert_eq!(e["source"], INTERNAL_SOURCE);
    }
    // The forwarder's own events get JSON fields and nothing else: no alias, calculated field
    // or lookup (so no CIM field), and no eventtype or tag names them.
    for st in &SOURCETYPES[1..] {
        assert_eq!(
            app.props.get(st, "KV_MODE"),
            Some("json"),
            "[{st}] KV_MODE = json"
        );
        for (key, _) in app.props.stanza(st) {
            assert!(
                !["FIELDALIAS-", "EVAL-", "LOOKUP-", "REPORT-", "TRANSFORMS-"]
                    .iter()
                    .any(|p| key.starts_with(p)),
                "[{st}] {key}: the forwarder's own events get no search-time knowledge"
            );
        }
    }
    assert_eq!(
        app.props.get(DEFAULT_SOURCETYPE, "KV_MODE"),
        Some("json"),
        "KV_MODE = json"
    );
    assert_eq!(
        app.props.get(DEFAULT_SOURCETYPE, "INDEXED_EXTRACTIONS"),
        None,
        "INDEXED_EXTRACTIONS would duplicate the JSON fields"
    );
    let sources: BTreeSet<&str> = EVENTS.iter().filter_map(|e| e["source"].as_str()).collect();
    let mut literals = 0;
    for (name, spl) in app.spl() {
        for (field, value) in comparisons(&tokenize(&spl)) {
            // A dashboard token stands for any value.
            let mut glob = String::new();
            for (i, part) in value.split('$').enumerate() {
                glob.push_str(if i % 2 == 1 { "*" } else { part });
            }
            match field.as_str() {
                "sourcetype" => {
                    literals += 1;
                    assert!(
                        SOURCETYPES.contains(&value.as_str()),
                        "{name}: sourcetype {value} is none of the forwarder's {SOURCETYPES:?}"
                    );
                }
                "source" => {
                    literals += 1;
                    assert!(
                        sources.iter().all(|s| wildcard_match(&glob, s, true)),
                        "{name}: source={value} does not match the forwarder's {sources:?}"
                    );
                }
                _ => {}
            }
        }
    }
    assert!(literals > 0, "the searches name the sourcetype somewhere");
}

#[test]
fn every_json_path_the_app_reads_is_in_the_events_with_the_right_shape() {
    let app = &*APP_FILES;
    // props.conf: what field aliases, calculated fields, the lookup and the timestamp read.
    let mut from_props = BTreeSet::new();
    for (key, value) in app.props_stanza() {
        if key.starts_with("FIELDALIAS-") {
            let words: Vec<&str> = value.split_whitespace().collect();
            assert!(
                words.len().is_multiple_of(3) && words.chunks(3).all(|w| w[1] == "AS"),
                "{key}: `field AS alias` pairs: {value}"
            );
            from_props.extend(words.chunks(3).map(|w| w[0].trim_matches('"').to_string()));
        } else if key.starts_with("EVAL-") {
            from_props.extend(json_paths(&tokenize(value)));
        }
    }
    let (_, lookup_input, _) = app.lookup_call();
    from_props.insert(lookup_input);
    let prefix = app.props.require(DEFAULT_SOURCETYPE, "TIME_PREFIX");
    let time_field = prefix
        .split('"')
        .nth(1)
        .expect("TIME_PREFIX names a quoted JSON key");
    from_props.insert(time_field.to_string());
    for path in [
        "clientIp",
        "actionId",
        "initiator.name",
        "target.name",
        "target.objectId",
    ] {
        assert!(
            from_props.contains(path),
            "props.conf no longer reads {path}: {from_props:?}"
        );
    }
    for path in &from_props {
        for (i, record) in records().enumerate() {
            let values = resolve(record, path).unwrap_or_else(|e| panic!("props.conf reads {e}"));
            assert!(
                !values.is_empty(),
                "props.conf reads {path}, missing in event {i}: {record}"
            );
        }
    }
    // details.parameters{}.key and .value are read as aligned lists (mvfind on keys, mvindex on
    // values): every parameter must have both.
    for record in records() {
        let keys = resolve(record, "details.parameters{}.key").expect("parameter keys");
        let values = resolve(record, "details.parameters{}.value").expect("parameter values");
        assert_eq!(keys.len(), values.len(), "parameters misaligned: {record}");
        assert!(keys.iter().chain(&values).all(|v| v.is_string()));
    }
    // The parameter keys the calculated fields look for exist in some event.
    for (key, value) in app.props_stanza() {
        if !key.starts_with("EVAL-") {
            continue;
        }
        let tokens = tokenize(value);
        for w in tokens.windows(5) {
            if let [
                Tok::Word(f),
                Tok::Punct('('),
                Tok::Field(p),
                Tok::Punct(','),
                Tok::Str(re),
            ] = w
                && f == "mvfind"
                && p == "details.parameters{}.key"
            {
                let wanted = re.trim_start_matches('^').trim_end_matches('$');
                assert!(
                    records().any(|r| resolve(r, "details.parameters{}.key")
                        .expect("keys")
                        .iter()
                        .any(|k| k.as_str() == Some(wanted))),
                    "{key} looks for parameter {wanted}, which no event has"
                );
            }
        }
    }
    // The time prefix and format parse the records' eventTime, and agree with the envelope time.
    let format = app
        .props
        .require(DEFAULT_SOURCETYPE, "TIME_FORMAT")
        .replace(".%3N", "%.3f");
    for e in EVENTS.iter() {
        let text = e["event"][time_field].as_str().expect("eventTime string");
        let t = NaiveDateTime::parse_from_str(text, &format)
            .unwrap_or_else(|err| panic!("TIME_FORMAT does not parse {text}: {err}"));
        let ms = t.and_utc().timestamp_millis();
        let time = e["time"].as_f64().expect("envelope time is a number");
        assert_eq!(
            (time * 1000.0).round() as i64,
            ms,
            "envelope time of {text}"
        );
    }
    // Searches, macros, eventtypes and dashboards: each JSON path is in some event, and never
    // has another shape.
    // A search of the forwarder's own events is checked against them (and against the records
    // too when it reads both); `spath path=...` names an array of objects, read whole.
    let mut from_searches = BTreeSet::new();
    for (name, spl) in app.spl() {
        let tokens = tokenize(&spl);
        let mut events: Vec<&Value> = Vec::new();
        if reads_internal(&name, &tokens) {
            events.extend(INTERNAL_EVENTS.iter().map(|e| &e["event"]));
        }
        if events.is_empty() || reads_records(&tokens) {
            events.extend(records());
        }
        let spath: BTreeSet<String> = comparisons(&tokens)
            .into_iter()
            .filter(|(f, _)| f == "path")
            .map(|(_, v)| v)
            .collect();
        for path in &spath {
            let array = path.strip_suffix("{}").expect("spath path=<array>{}");
            assert!(
                events
                    .iter()
                    .any(|e| e[array].as_array().is_some_and(|a| !a.is_empty())),
                "{name}: spath path={path}, which no event has as an array"
            );
        }
        for path in json_paths(&tokens).difference(&spath) {
            let mut present = 0;
            for event in &events {
                let values = resolve(event, path).unwrap_or_else(|e| panic!("{name}: {e}"));
                present += usize::from(!values.is_empty());
            }
            assert!(present > 0, "{name} reads {path}, which no event has");
            from_searches.insert(path.clone());
        }
    }
    assert!(
        from_searches.contains("actionId"),
        "the reports list actionId: {from_searches:?}"
    );
}

#[test]
fn every_rc_field_a_search_names_is_defined_by_the_app_or_indexed_by_the_forwarder() {
    let app = &*APP_FILES;
    let mut known = app.defined_fields();
    for e in EVENTS.iter() {
        known.extend(
            e["fields"]
                .as_object()
                .expect("indexed fields")
                .keys()
                .cloned(),
        );
    }
    assert!(known.contains("rc_account") && known.contains("rc_action_id"));
    let mut used = 0;
    for (name, spl) in app.spl() {
        for t in tokenize(&spl) {
            if let Tok::Word(w) | Tok::Field(w) = t
                && w.starts_with("rc_")
            {
                used += 1;
                assert!(known.contains(&w), "{name} uses {w}, which nothing defines");
            }
        }
    }
    assert!(used > 0);
    // The CIM fields each dataset requires are all defined.
    for field in [
        "action",
        "app",
        "dest",
        "src",
        "user",
        "change_type",
        "command",
        "dvc",
        "object",
        "object_attrs",
        "object_category",
        "object_id",
        "status",
        "vendor_product",
        "src_user",
        "signature",
        "result",
    ] {
        assert!(
            known.contains(field),
            "props.conf does not define CIM field {field}"
        );
    }
}

#[test]
fn every_simulator_action_id_lands_in_its_intended_cim_dataset_through_the_lookup() {
    let app = &*APP_FILES;
    let t = "ringcentral_audit_actions";
    let (table, _, outputs) = app.lookup_call();
    assert_eq!(table, t);
    assert_eq!(
        app.transforms.get(t, "match_type"),
        Some("WILDCARD(vendor_action)")
    );
    assert_eq!(
        app.transforms.get(t, "max_matches"),
        Some("1"),
        "first row wins"
    );
    let columns: BTreeSet<&String> = app.lookup.columns.iter().collect();
    for out in &outputs {
        assert!(columns.contains(out), "lookup has no column {out}");
    }
    // Through the real events: every simulator action id.
    let mut checked = BTreeSet::new();
    for e in EVENTS.iter() {
        let id = e["event"]["actionId"].as_str().expect("actionId");
        if checked.insert(id.to_string()) {
            check_category(app, id, intended(id), &app.fields(e));
        }
    }
    assert_eq!(checked.len(), ACTION_IDS.len());
    // Every failed-login and lockout id of the simulator is caught by a pattern, not an exact
    // row: RingCentral publishes no such ids, so the simulator's are invented.
    for id in ACTION_IDS {
        if matches!(intended(id), FailedLogin | Lockout) {
            let row = app.lookup_row(id).expect("a row");
            assert!(
                row["vendor_action"].contains('*'),
                "{id} must be matched by a pattern, not listed: {row:?}"
            );
        }
    }
    // Exact rows are only the ids RingCentral published.
    let exact: BTreeSet<&str> = app
        .lookup
        .rows
        .iter()
        .filter(|r| r.get("rc_match") == "exact")
        .map(|r| r.get("vendor_action"))
        .collect();
    assert_eq!(exact, PUBLISHED_ACTION_IDS.iter().copied().collect());
}

#[test]
fn plausible_real_world_ids_get_their_category_and_unknown_ones_are_never_a_success() {
    let app = &*APP_FILES;
    for (id, what) in REAL_WORLD_IDS {
        check_category(app, id, *what, &app.fields(&envelope_with(id)));
    }
}

#[test]
fn every_lookup_row_carries_cim_allowed_values_for_its_category() {
    let app = &*APP_FILES;
    let categories = [
        "authentication",
        "lockout",
        "account_management",
        "configuration",
        "session",
        UNKNOWN,
    ];
    for row in &app.lookup.rows {
        let r = |c: &str| row.get(c);
        let id = r("vendor_action");
        assert!(
            categories.contains(&r("rc_category")),
            "{id}: rc_category {}",
            r("rc_category")
        );
        assert!(
            ["exact", "guard", "pattern", "catch_all"].contains(&r("rc_match")),
            "{id}: rc_match {}",
            r("rc_match")
        );
        assert!(!r("signature").is_empty(), "{id}: signature");
        let mut fields: BTreeMap<String, String> = row
            .0
            .iter()
            .filter(|(k, v)| k.as_str() != "vendor_action" && !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        fields.insert("sourcetype".into(), DEFAULT_SOURCETYPE.into());
        let datasets = app.datasets(&fields);
        if datasets.contains("Authentication") {
            assert!(
                CIM_AUTHENTICATION_ACTIONS.contains(&r("action")),
                "{id}: Authentication action {}",
                r("action")
            );
        }
        if datasets.contains("Change") {
            assert!(
                CIM_CHANGE_ACTIONS.contains(&r("action")),
                "{id}: Change action {}",
                r("action")
            );
            assert!(
                CIM_CHANGE_STATUS.contains(&r("status")),
                "{id}: Change status {}",
                r("status")
            );
            assert!(
                !r("change_type").is_empty() && !r("object_category").is_empty(),
                "{id}"
            );
        }
        assert!(
            !(datasets.contains("Authentication") && datasets.contains("Change")),
            "{id}: in two data models"
        );
        if r("rc_category") == "lockout" {
            assert!(
                datasets.contains("Change.Account_Management.Account_Lockouts"),
                "{id}"
            );
        }
        if matches!(r("rc_category"), "session" | UNKNOWN) {
            assert!(
                datasets.is_empty(),
                "{id}: {} is in no data model",
                r("rc_category")
            );
            assert_eq!(
                (r("action"), r("status")),
                ("", ""),
                "{id}: never a success"
            );
        }
    }
    // The catch-all row is last, alone, and files the rest as unknown.
    let last = app.lookup.rows.last().expect("rows");
    assert_eq!(
        (last.get("vendor_action"), last.get("rc_category")),
        ("*", UNKNOWN)
    );
    assert_eq!(
        app.lookup
            .rows
            .iter()
            .filter(|r| r.get("vendor_action") == "*")
            .count(),
        1
    );
    // The binary embeds exactly this file.
    assert_eq!(
        read("lookups/ringcentral_audit_actions.csv"),
        SHIPPED_LOOKUP,
        "rc-audit-hec embeds the app's lookup"
    );
}

/// Evaluates props.conf's `EVAL-user` for an Extension target "Victim" acted on by "Admin":
/// the condition is `match(actionId, "(?i)(A|B|...)") AND NOT match(actionId, "(?i)(C|...)")`
/// over plain words, which this test evaluates as case-insensitive substring tests.
fn eval_user(app: &App, id: &str) -> &'static str {
    let eval = app.props.require(DEFAULT_SOURCETYPE, "EVAL-user");
    let words: Vec<Vec<String>> = eval
        .split("match(actionId, \"(?i)(")
        .skip(1)
        .map(|part| {
            let list = part.split(")\")").next().expect("a closing )\"");
            assert!(
                list.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|'),
                "EVAL-user: only plain words in the alternations: {list}"
            );
            list.split('|').map(str::to_string).collect()
        })
        .collect();
    assert_eq!(words.len(), 2, "EVAL-user: a match and a NOT match: {eval}");
    assert!(eval.contains("AND NOT match(actionId"), "{eval}");
    let up = id.to_ascii_uppercase();
    let any = |ws: &[String]| ws.iter().any(|w| up.contains(w.as_str()));
    if any(&words[0]) && !any(&words[1]) {
        "Victim"
    } else {
        "Admin"
    }
}

#[test]
fn user_is_the_actor_for_configuration_and_the_account_acted_on_for_account_events() {
    let app = &*APP_FILES;
    let props = app.props_stanza();
    let get = |k: &str| {
        props
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("props.conf has no {k}"))
    };
    // user_id follows user.
    assert_eq!(
        get("EVAL-user").replace("'target.name', 'initiator.name'", ""),
        get("EVAL-user_id").replace("'target.objectId', 'initiator.extensionId'", ""),
        "EVAL-user and EVAL-user_id decide the same way"
    );
    let mut ids: Vec<(&str, Intended)> = REAL_WORLD_IDS.to_vec();
    ids.extend(ACTION_IDS.iter().map(|id| (*id, intended(id))));
    for (id, what) in ids {
        let category = app
            .lookup_row(id)
            .map(|r| r["rc_category"].clone())
            .unwrap_or_default();
        let user = eval_user(app, id);
        match what {
            Configuration => assert_eq!(
                user, "Admin",
                "{id} ({category}): CIM Change user is the actor"
            ),
            AccountManagement | Lockout => {
                assert_eq!(
                    user, "Victim",
                    "{id} ({category}): the account acted on is user"
                )
            }
            _ => {}
        }
    }
    // Tenants do not merge: dest is the account, and the account id is exposed.
    for key in ["EVAL-dest", "EVAL-dvc"] {
        assert!(
            get(key).contains("rc_account") && get(key).contains("'accountId'"),
            "{key}"
        );
    }
    assert_eq!(get("EVAL-vendor_account"), "'accountId'");
    assert_eq!(get("FIELDALIAS-rc_src_user"), "initiator.name AS src_user");
}

#[test]
fn indexed_fields_are_declared_in_fields_conf() {
    let app = &*APP_FILES;
    let mut indexed = BTreeSet::new();
    for e in EVENTS.iter() {
        indexed.extend(e["fields"].as_object().expect("fields").keys().cloned());
    }
    assert_eq!(
        indexed,
        ["rc_account", "rc_action_id"].map(String::from).into()
    );
    for field in &indexed {
        assert_eq!(
            app.fields_conf.get(field, "INDEXED"),
            Some("true"),
            "{field}"
        );
        assert_eq!(
            app.fields_conf.get(field, "INDEXED_VALUE"),
            Some("false"),
            "{field}: its value need not be in the raw text"
        );
    }
}

#[test]
fn searches_compare_lookup_fields_only_with_values_the_lookup_gives() {
    let app = &*APP_FILES;
    let (_, _, outputs) = app.lookup_call();
    let mut given: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // The simulator's events, and the plausible real-world ids (the simulator emits no unknown
    // id, which the Unmapped Action IDs alert selects).
    let table = REAL_WORLD_IDS.iter().map(|(id, _)| envelope_with(id));
    for e in EVENTS.iter().cloned().chain(table) {
        for (k, v) in app.fields(&e) {
            given.entry(k).or_default().insert(v);
        }
    }
    let mut compared = 0;
    for (name, spl) in app.spl() {
        for (field, value) in comparisons(&tokenize(&spl)) {
            if !outputs.contains(&field) || value.contains('*') || value.contains('$') {
                continue;
            }
            compared += 1;
            assert!(
                given.get(&field).is_some_and(|vs| vs.contains(&value)),
                "{name}: {field}={value}, but the lookup gives the events only {:?}",
                given.get(&field)
            );
        }
    }
    assert!(compared > 0);
}

#[test]
fn macros_eventtypes_and_dashboard_tokens_used_are_defined() {
    let app = &*APP_FILES;
    let macros: BTreeSet<&str> = app.macros.names().collect();
    let eventtypes: BTreeSet<&str> = app.eventtypes.names().collect();
    for (name, spl) in app.spl() {
        let tokens = tokenize(&spl);
        for m in macros_used(&tokens) {
            assert!(
                macros.contains(m.as_str()),
                "{name} uses undefined macro `{m}`"
            );
        }
        for (field, value) in comparisons(&tokens) {
            if field == "eventtype" {
                assert!(
                    eventtypes.contains(value.as_str()),
                    "{name}: no eventtype {value}"
                );
            }
        }
    }
    assert!(
        app.macros
            .require("ringcentral_audit_index", "definition")
            .starts_with("index="),
        "the index macro is `index=...`"
    );
    assert!(
        macros_used(&tokenize(
            app.macros.require("ringcentral_audit", "definition")
        ))
        .contains("ringcentral_audit_index")
    );
    for name in app.eventtypes.names() {
        let search = app.eventtypes.require(name, "search");
        assert!(
            !search.contains("index="),
            "eventtype {name} names an index"
        );
        assert!(
            !app.tags_of(name).is_empty(),
            "eventtype {name} has no tags"
        );
    }
    for (file, def) in &app.dashboards {
        let inputs = def["inputs"].as_object().expect("inputs");
        let mut tokens: BTreeSet<String> = BTreeSet::new();
        for input in inputs.values() {
            let token = input["options"]["token"].as_str().expect("input token");
            if input["type"] == "input.timerange" {
                tokens.insert(format!("{token}.earliest"));
                tokens.insert(format!("{token}.latest"));
            } else {
                tokens.insert(token.to_string());
            }
        }
        let check = |text: &str, what: &str| {
            for (i, part) in text.split('$').enumerate() {
                if i % 2 == 1 {
                    let name = part.split('|').next().unwrap_or_default();
                    assert!(
                        tokens.contains(name) || name.starts_with("row."),
                        "{file} {what}: undefined token ${part}$"
                    );
                }
            }
        };
        let data_sources = def["dataSources"].as_object().expect("dataSources");
        for (id, ds) in data_sources {
            check(ds["options"]["query"].as_str().unwrap_or_default(), id);
        }
        check(&def["defaults"].to_string(), "defaults");
        let visualizations = def["visualizations"].as_object().expect("visualizations");
        for (id, viz) in visualizations {
            let primary = viz["dataSources"]["primary"].as_str().expect("primary");
            assert!(
                data_sources.contains_key(primary),
                "{file} {id}: no data source {primary}"
            );
            check(&viz["eventHandlers"].to_string(), id);
        }
        for item in def["layout"]["structure"].as_array().expect("layout") {
            let id = item["item"].as_str().expect("item");
            assert!(
                visualizations.contains_key(id),
                "{file}: layout item {id} is not a visualization"
            );
        }
        for input in def["layout"]["globalInputs"].as_array().expect("inputs") {
            assert!(inputs.contains_key(input.as_str().expect("input id")));
        }
    }
    let nav = read("default/data/ui/nav/default.xml");
    let default_view = nav
        .split("<view ")
        .find(|v| v.contains(r#"default="true""#))
        .and_then(|v| v.split('"').nth(1))
        .expect("a default view");
    assert_eq!(default_view, "ringcentral_audit_overview");
    assert!(
        app.dashboards
            .iter()
            .any(|(f, _)| f == "ringcentral_audit_overview.xml")
    );
    assert!(
        app.dashboards
            .iter()
            .any(|(f, _)| f == "ringcentral_audit_investigation.xml")
    );
}

const UNMAPPED: &str = "RingCentral - Unmapped Action IDs";

#[test]
fn alerts_ship_disabled_scheduled_throttled_and_without_recipients() {
    let app = &*APP_FILES;
    let ss = &app.savedsearches;
    let alerts: BTreeSet<&str> = ss
        .names()
        .filter(|n| ss.get(n, "enableSched") == Some("1"))
        .collect();
    let expected: BTreeSet<&str> = [
        "RingCentral - Excessive Failed Logins",
        "RingCentral - Password Spraying",
        "RingCentral - Account Locked Out",
        "RingCentral - Failed Logins Followed by Success",
        "RingCentral - Admin Role Granted or Changed",
        "RingCentral - Burst of Changes by One Admin",
        "RingCentral - Forwarder Silent",
        "RingCentral - Account Degraded",
        "RingCentral - Completeness Gap",
        UNMAPPED,
    ]
    .into_iter()
    .collect();
    assert_eq!(alerts, expected);
    for name in &alerts {
        // The unmapped-ids alert only lists ids, daily: it ships enabled so that an unknown
        // failed-login or lockout id is seen before anyone enables the others.
        let disabled = if *name == UNMAPPED { "0" } else { "1" };
        assert_eq!(
            ss.get(name, "disabled"),
            Some(disabled),
            "{name}: disabled = {disabled}"
        );
        let earliest = ss.require(name, "dispatch.earliest_time");
        assert!(!earliest.starts_with("rt"), "{name}: real-time");
        ss.require(name, "dispatch.latest_time");
        let cron = ss.require(name, "cron_schedule");
        let minute = cron.split_whitespace().next().expect("cron minute field");
        let per_hour = if let Some(step) = minute.strip_prefix("*/") {
            60 / step.parse::<usize>().expect("cron step")
        } else if minute == "*" {
            60
        } else {
            minute.split(',').count()
        };
        assert!(per_hour <= 12, "{name}: runs {per_hour} times an hour");
        assert_eq!(
            ss.get(name, "alert.suppress"),
            Some("1"),
            "{name}: throttled"
        );
        assert!(!ss.require(name, "alert.suppress.fields").is_empty());
        ss.require(name, "alert.suppress.period");
        for key in ["counttype", "relation", "quantity", "alert.severity"] {
            ss.require(name, key);
        }
        for (key, value) in ss.stanza(name) {
            assert!(
                !(key.starts_with("action.") && value.contains('@')),
                "{name}: hard-coded recipient in {key}"
            );
            assert!(
                !["alert_type", "alert_threshold", "alert_comparator"].contains(&key.as_str()),
                "{name}: {key} is not a savedsearches.conf key"
            );
        }
        let search = ss.require(name, "search");
        assert!(
            macros_used(&tokenize(search))
                .iter()
                .any(|m| m.starts_with("ringcentral_audit")),
            "{name}: scoped by the app's macros"
        );
    }
    // Thresholds live in macros: the numeric comparisons in alerts use macros, not literals.
    for name in &alerts {
        let tokens = tokenize(ss.require(name, "search"));
        for w in tokens.windows(3) {
            if let [Tok::Word(_), Tok::Op(op), Tok::Word(n)] = w
                && op.starts_with('>')
            {
                assert!(
                    n == "0" || n.parse::<f64>().is_err(),
                    "{name}: hard-coded threshold {n}"
                );
            }
        }
    }
}

#[test]
fn app_conf_and_manifest_carry_the_crate_version_and_the_app_id() {
    let version = env!("CARGO_PKG_VERSION");
    let conf = Conf::load("default/app.conf");
    assert_eq!(conf.get("launcher", "version"), Some(version), "[launcher]");
    assert_eq!(conf.get("id", "version"), Some(version), "[id]");
    assert_eq!(conf.get("package", "id"), Some(APP));
    assert_eq!(conf.get("id", "name"), Some(APP));
    assert_eq!(conf.get("package", "check_for_updates"), Some("false"));
    let manifest: Value =
        serde_json::from_str(&read("app.manifest")).expect("app.manifest is JSON");
    assert_eq!(manifest["schemaVersion"], "2.0.0");
    assert_eq!(manifest["info"]["id"]["version"], version, "app.manifest");
    assert_eq!(manifest["info"]["id"]["name"], APP);
    // Conventions Splunk Cloud vetting relies on.
    assert!(!app_dir().join("local").exists(), "no local/ in the app");
    assert!(!app_dir().join("metadata/local.meta").exists());
    let meta = Conf::load("metadata/default.meta");
    let access = meta.require("", "access");
    assert!(
        access.contains("write : [ admin, sc_admin ]"),
        "write: [admin, sc_admin], got {access}"
    );
    for kind in [
        "props",
        "transforms",
        "lookups",
        "eventtypes",
        "tags",
        "macros",
    ] {
        assert_eq!(
            meta.get(kind, "export"),
            Some("system"),
            "[{kind}] export = system"
        );
    }
    for file in [
        "props",
        "transforms",
        "eventtypes",
        "tags",
        "macros",
        "savedsearches",
    ] {
        let conf = Conf::load(&format!("default/{file}.conf"));
        assert!(
            conf.names().all(|n| n != "default" && !n.is_empty()),
            "{file}.conf: no [default] stanza or global keys"
        );
    }
}

/// Seconds of a relative Splunk time like `-3d`, `-30d@d`, `-60m` (its magnitude, snap ignored).
fn span_seconds(t: &str) -> u64 {
    let t = t.trim_start_matches('-');
    let t = t.split('@').next().unwrap_or_default();
    let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap_or(0);
    n * match &t[digits.len()..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        unit => panic!("unit {unit} in {t}"),
    }
}

#[test]
fn alerts_see_late_events_and_count_distinct_records() {
    let app = &*APP_FILES;
    let ss = &app.savedsearches;
    let mut threshold_alerts = 0;
    for name in ss.names() {
        // Alerts on a state rather than on events: silence (the newest heartbeat's index
        // time), an account's state in its latest heartbeats, and each period's final
        // reconciliation over the whole range at every run. Late events cannot slip past them.
        let state_alerts = [
            "RingCentral - Forwarder Silent",
            "RingCentral - Account Degraded",
            "RingCentral - Completeness Gap",
        ];
        if ss.get(name, "enableSched") != Some("1") || state_alerts.contains(&name) {
            continue;
        }
        let search = ss.require(name, "search");
        // A wide event-time range: an event delivered a day late still falls inside it.
        let earliest = ss.require(name, "dispatch.earliest_time");
        assert!(
            span_seconds(earliest) >= 86_400,
            "{name}: earliest {earliest} is too narrow for late events"
        );
        // ...and selection by index time, so an event alerts when it arrives.
        assert!(
            search.contains("_indextime") || ss.get(name, "dispatch.index_earliest").is_some(),
            "{name}: selects nothing by index time"
        );
        if let Some(window) = search.split("_indextime >= relative_time(now(), \"").nth(1) {
            let slice = span_seconds(window.split('"').next().unwrap_or_default());
            let cron = ss.require(name, "cron_schedule");
            let step: u64 = cron
                .split_whitespace()
                .next()
                .and_then(|m| m.strip_prefix("*/"))
                .and_then(|n| n.parse().ok())
                .expect("*/N cron");
            assert!(
                slice >= 2 * step * 60,
                "{name}: index-time slice {slice}s shorter than two runs"
            );
        }
        // Thresholds count distinct record ids, by event time.
        if search.contains("_threshold`") {
            threshold_alerts += 1;
            assert!(
                search.contains("dc(id)") || search.contains("dc(failure_id)"),
                "{name}: counts events, not distinct records"
            );
            assert!(
                search.contains("streamstats time_window="),
                "{name}: threshold over an event-time window"
            );
            assert!(
                search.contains("sort 0 _time"),
                "{name}: streamstats time_window needs ascending _time"
            );
        }
    }
    assert_eq!(threshold_alerts, 5);
    // The unmapped ids alert: daily, by index time, selecting the unknown category.
    assert_eq!(
        ss.get(UNMAPPED, "cron_schedule")
            .map(|c| c.split_whitespace().nth(2) == Some("*") && !c.starts_with('*')),
        Some(true)
    );
    assert!(ss.get(UNMAPPED, "dispatch.index_earliest").is_some());
    assert!(
        ss.require(UNMAPPED, "search")
            .contains("rc_category=\"unknown\"")
    );
}

#[test]
fn role_changes_inventory_and_dashboards_keep_every_event() {
    let app = &*APP_FILES;
    let ss = &app.savedsearches;
    // Admin role alert: any record with the role parameters, whatever the lookup made of it.
    let admin = ss.require("RingCentral - Admin Role Granted or Changed", "search");
    assert!(!admin.contains("eventtype="), "{admin}");
    assert!(admin.contains("`ringcentral_audit_admin_role_match`"));
    // Inventory: fillnull before stats BY lookup fields, so untagged events are not dropped.
    let inv = ss.require("RingCentral - Action ID Inventory", "search");
    let fill = inv.find("fillnull").expect("fillnull in the inventory");
    let stats = inv.find("| stats").expect("stats");
    assert!(fill < stats);
    for f in ["actionId", "rc_category", "rc_match", "action", "signature"] {
        assert!(inv[fill..stats].contains(f), "inventory fills {f}");
    }
    // Investigation: `*` must match events with no src or user, so those are filled first.
    let (_, inv_view) = app
        .dashboards
        .iter()
        .find(|(f, _)| f == "ringcentral_audit_investigation.xml")
        .expect("investigation view");
    for (id, ds) in inv_view["dataSources"].as_object().expect("dataSources") {
        let q = ds["options"]["query"].as_str().unwrap_or_default();
        if let Some(at) = q.find("$src|s$").or_else(|| q.find("$user|s$")) {
            let fill = q.find("fillnull").unwrap_or(usize::MAX);
            assert!(
                fill < at && q[fill..at].contains("src") && q[fill..at].contains("user"),
                "{id}: {q}"
            );
        }
    }
    // Overview: no panel claims every account while it filters on the account box.
    let (_, overview) = app
        .dashboards
        .iter()
        .find(|(f, _)| f == "ringcentral_audit_overview.xml")
        .expect("overview");
    for (id, viz) in overview["visualizations"]
        .as_object()
        .expect("visualizations")
    {
        let text = format!("{} {}", viz["title"], viz["description"]).to_lowercase();
        let ds = viz["dataSources"]["primary"].as_str().unwrap_or_default();
        let q = overview["dataSources"][ds]["options"]["query"]
            .as_str()
            .unwrap_or_default();
        assert!(
            !(text.contains("all accounts") && q.contains("$account")),
            "{id} says all accounts but filters on $account$"
        );
    }
}

/// The app's setup steps tell the HEC admin what the forwarder supports: indexer acknowledgement
/// is `hec.use_ack` (it once said "not supported" while the forwarder had it).
#[test]
fn the_app_readme_matches_the_forwarder_on_indexer_acknowledgement() {
    let readme = std::fs::read_to_string(app_dir().join("README.md")).unwrap();
    assert!(
        readme.contains("hec.use_ack"),
        "README must name hec.use_ack"
    );
    assert!(
        !readme.contains("does not use it"),
        "README still says acknowledgement is unsupported"
    );
    let forwarder =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        forwarder.contains("`use_ack`"),
        "the option the app README names exists"
    );
}

/// Issue 12: the forwarder's own events (heartbeats, reconciliation results) never count as
/// audit records: no eventtype, tag or data model takes them, every sourcetype a search names is
/// exact (so `sourcetype="ringcentral:audit"` can never match `ringcentral:audit:heartbeat`),
/// the index macro is never used without one, and they carry no `id` for a `dc(id)` to count.
#[test]
fn the_forwarders_own_events_never_count_as_audit_records() {
    let app = &*APP_FILES;
    for e in INTERNAL_EVENTS.iter() {
        let fields = app.fields(e);
        assert!(
            app.eventtypes_of(&fields).is_empty(),
            "{}: in an eventtype",
            e["sourcetype"]
        );
        assert!(
            app.datasets(&fields).is_empty(),
            "{}: in a data model",
            e["sourcetype"]
        );
        assert!(e["event"].get("id").is_none(), "no record id: {e}");
        assert!(
            e["fields"].get("rc_action_id").is_none(),
            "no action id: {e}"
        );
    }
    let mut record_searches = 0;
    for (name, spl) in app.spl() {
        let tokens = tokenize(&spl);
        let sourcetypes: Vec<String> = comparisons(&tokens)
            .into_iter()
            .filter(|(f, _)| f == "sourcetype")
            .map(|(_, v)| v)
            .collect();
        for st in &sourcetypes {
            for other in SOURCETYPES.iter().filter(|o| *o != st) {
                assert!(
                    !wildcard_match(st, other, false),
                    "{name}: sourcetype={st} also matches {other}"
                );
            }
        }
        if macros_used(&tokens).contains("ringcentral_audit_index") {
            assert!(
                !sourcetypes.is_empty(),
                "{name}: the index macro without a sourcetype counts every kind of event"
            );
        }
        // A search of records that is not also a search of results counts records only.
        if reads_records(&tokens) && !reads_internal(&name, &tokens) {
            record_searches += 1;
            assert!(
                sourcetypes.iter().all(|s| s == DEFAULT_SOURCETYPE),
                "{name}: {sourcetypes:?}"
            );
        }
    }
    assert!(record_searches > 10, "{record_searches}");
    // The base macros: records, heartbeats and results each select one sourcetype.
    for (m, st) in [
        ("ringcentral_audit", DEFAULT_SOURCETYPE),
        ("ringcentral_audit_heartbeat", HEARTBEAT_SOURCETYPE),
        (
            "ringcentral_audit_reconciliation",
            RECONCILIATION_SOURCETYPE,
        ),
    ] {
        let tokens = tokenize(app.macros.require(m, "definition"));
        assert_eq!(
            comparisons(&tokens),
            [("sourcetype".to_string(), st.to_string())],
            "[{m}]"
        );
        assert!(macros_used(&tokens).contains("ringcentral_audit_index"));
    }
}

/// SPL words that are commands, functions, keywords or Splunk's own fields, not event fields.
const SPL_WORDS: &[&str] = &[
    "search",
    "eval",
    "stats",
    "where",
    "table",
    "sort",
    "dedup",
    "spath",
    "mvexpand",
    "streamstats",
    "eventstats",
    "tstats",
    "append",
    "makeresults",
    "fields",
    "fillnull",
    "value",
    "path",
    "output",
    "input",
    "sortby",
    "count",
    "dc",
    "latest",
    "first",
    "max",
    "min",
    "sum",
    "if",
    "null",
    "isnull",
    "in",
    "case",
    "true",
    "round",
    "now",
    "strftime",
    "strptime",
    "replace",
    "floor",
    "relative_time",
    "isnum",
    "addinfo",
    "info_min_time",
    "info_max_time",
    "host",
    "source",
    "sourcetype",
    "index",
    "_time",
    "_indextime",
];

/// The field names an SPL text makes (`AS x`, `output=x`, eval assignments), each with the
/// position of its first token that makes it.
fn made_names(tokens: &[Tok]) -> BTreeMap<String, usize> {
    let mut made = BTreeMap::new();
    let mut command = String::new();
    for (i, t) in tokens.iter().enumerate() {
        let back = |n: usize| i.checked_sub(n).map(|j| &tokens[j]);
        match t {
            Tok::Punct('|') | Tok::Punct('[') => command.clear(),
            Tok::Word(w) if command.is_empty() => command = w.to_ascii_lowercase(),
            Tok::Word(w) => {
                let assigned = matches!(tokens.get(i + 1), Some(Tok::Op(o)) if o == "=");
                let renamed = matches!(back(1), Some(Tok::Word(a)) if a.eq_ignore_ascii_case("AS"));
                let output = matches!(back(1), Some(Tok::Op(o)) if o == "=")
                    && matches!(back(2), Some(Tok::Word(o)) if o == "output");
                let eval = command == "eval"
                    && assigned
                    && (matches!(back(1), Some(Tok::Word(e)) if e == "eval")
                        || matches!(back(1), Some(Tok::Punct(','))));
                if renamed || output || eval {
                    made.entry(w.clone()).or_insert(i);
                }
            }
            _ => {}
        }
    }
    made
}

/// Issue 12: every field a search of heartbeats or reconciliation results reads is one the
/// forwarder puts in those events (or, for the completeness search, `id` and `rc_account` of the
/// records), and every field of the issue's contract is read somewhere.
#[test]
fn searches_of_the_forwarders_own_events_read_only_fields_it_sends() {
    let app = &*APP_FILES;
    let mut sent: BTreeSet<String> = ["id", "rc_account"].map(String::from).into();
    for e in INTERNAL_EVENTS.iter() {
        for (k, v) in e["event"].as_object().expect("event object") {
            sent.insert(k.clone());
            for item in v.as_array().into_iter().flatten() {
                sent.extend(item.as_object().expect("array of objects").keys().cloned());
            }
        }
        sent.extend(
            e["fields"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone()),
        );
    }
    let mut read: BTreeSet<String> = BTreeSet::new();
    let mut checked = 0;
    for (name, spl) in app.spl() {
        let tokens = tokenize(&spl);
        if !reads_internal(&name, &tokens) {
            continue;
        }
        checked += 1;
        // Names the search makes itself, or a macro it uses makes.
        // A name counts as made from where it is made on; a used macro's, from the start.
        let mut made = made_names(&tokens);
        let mut pending: Vec<String> = macros_used(&tokens).into_iter().collect();
        while let Some(m) = pending.pop() {
            let definition = tokenize(app.macros.require(&m, "definition"));
            made.extend(made_names(&definition).into_keys().map(|k| (k, 0)));
            pending.extend(macros_used(&definition));
        }
        for (i, t) in tokens.iter().enumerate() {
            let Tok::Word(w) = t else { continue };
            // A value compared with, not a field; but `spath path=x` reads field x.
            let after_op = matches!(i.checked_sub(1).map(|j| &tokens[j]), Some(Tok::Op(_)))
                && !matches!(i.checked_sub(2).map(|j| &tokens[j]), Some(Tok::Word(p)) if p == "path");
            let is_field = w
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && w.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '{' || c == '}'
                });
            let is_made = made.get(w).is_some_and(|at| *at <= i);
            if !is_field || after_op || SPL_WORDS.contains(&w.as_str()) || is_made {
                continue;
            }
            let field = w.trim_end_matches("{}");
            assert!(
                sent.contains(field),
                "{name} reads {w}, which the forwarder does not send (it sends {sent:?})"
            );
            read.insert(field.to_string());
        }
    }
    assert!(checked >= 6, "{checked}");
    for field in [
        "account",
        "period_start",
        "period_end",
        "ringcentral_count",
        "forwarded_count",
        "status",
        "recovered",
        "reason",
        "accounts",
        "state",
        "cursor_lag_s",
        "last_poll",
        "spool_depth",
        "dead_letters",
        "last_delivery",
        "delivery_state",
        "version",
    ] {
        assert!(read.contains(field), "no search reads {field}: {read:?}");
    }
}

/// The completeness search reads `period_start` as the forwarder writes it (RFC 3339 UTC with
/// milliseconds, `time::ms_rfc3339`) into the epoch second the records of that period are put
/// in (`floor(_time / period) * period`): its `replace` drops the fraction and turns `Z` into
/// `+0000`, then `strptime` reads an explicit offset, so the user's time zone plays no part.
#[test]
fn the_completeness_search_reads_the_forwarders_period_start_as_utc() {
    let app = &*APP_FILES;
    let def = app
        .macros
        .require("ringcentral_audit_completeness", "definition");
    let (pattern, replacement, format) =
        ("([.][0-9]+)?(Z|[+]00:00)$", "+0000", "%Y-%m-%dT%H:%M:%S%z");
    assert!(
        def.contains(&format!(
            "strptime(replace(period_start, \"{pattern}\", \"{replacement}\"), \"{format}\")"
        )),
        "{def}"
    );
    let period: i64 = app
        .macros
        .require("ringcentral_audit_reconcile_period_seconds", "definition")
        .parse()
        .expect("seconds");
    assert_eq!(
        period, 86_400,
        "the forwarder's default [reconcile] period, 1d"
    );
    // The pattern, applied by hand: an optional fraction, then Z or +00:00, at the end.
    let splunk_replace = |text: &str| -> String {
        let rest = text
            .strip_suffix('Z')
            .or_else(|| text.strip_suffix("+00:00"))
            .expect("UTC");
        let rest = match rest.rfind('.') {
            Some(dot) if rest[dot + 1..].chars().all(|c| c.is_ascii_digit()) => &rest[..dot],
            _ => rest,
        };
        format!("{rest}{replacement}")
    };
    for day in 19_000..19_010_i64 {
        let ms = day * 86_400_000;
        let text = rc_audit_hec::time::ms_rfc3339(ms).expect("in range");
        assert!(text.ends_with(".000Z"), "{text}");
        let parsed = DateTime::parse_from_str(&splunk_replace(&text), format)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.timestamp(), ms / 1000, "{text}");
        assert_eq!(
            parsed.timestamp() % period,
            0,
            "a period start is a period's multiple"
        );
    }
    for e in INTERNAL_EVENTS.iter() {
        if let Some(start) = e["event"]["period_start"].as_str() {
            DateTime::parse_from_str(&splunk_replace(start), format).expect("parses");
        }
    }
}
