//! `actions`: which `actionId`s an account's audit trail really holds, and what the Splunk app's
//! action lookup makes of each.
//!
//! RingCentral publishes only four action ids (`LOGIN_SUCCESSFULLY`, `CHANGE_USER_ROLE`,
//! `CHANGE_SECRET_INFO`, `CHANGE_USER_INFO`); the ids of failed logins, lockouts, MFA or password
//! resets are not documented anywhere. The app's lookup therefore files every id it cannot place
//! as `unknown` (no CIM data model, no alert). This command is the calibration step: it reads
//! the account's recent records **read-only** (no spool, no cursor, no lock: it works while the
//! service runs), with the same pager, client and rate limiter as live polling, and prints each
//! distinct `actionId` with its count, an example record's `eventType` and parameter names, and
//! the category the lookup gives it, flagging the ones that fall through to `unknown`.
//!
//! The lookup is the app's own CSV, embedded at build time ([`SHIPPED_LOOKUP`]), so the binary
//! and the app cannot disagree; [`ActionLookup::first_match`] is the one implementation of
//! Splunk's `WILDCARD` + `max_matches = 1` semantics, also used by `tests/splunk_app.rs`.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Error, Report, load_config};
use crate::backfill::{parse_time, plan_range, select_accounts};
use crate::config::{AccountConfig, Config};
use crate::exit::{Code, Outcome};
use crate::pipeline::{AccountError, Options, ringcentral_http};
use crate::ringcentral::poller::{API_RECORD_LIMIT, Pager};
use crate::ringcentral::{RcClient, RcError};
use crate::telemetry::Stats;
use crate::time::rfc3339_millis;

/// The Splunk app's action lookup, as shipped (`splunk-app/.../lookups/ringcentral_audit_actions.csv`).
pub const SHIPPED_LOOKUP: &str =
    include_str!("../../splunk-app/ringcentral_audit/lookups/ringcentral_audit_actions.csv");

/// The category the lookup's catch-all row gives ids nothing else matches.
pub const UNKNOWN: &str = "unknown";

/// `actions` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ActionsArgs {
    /// Only this account (repeat for several; default: every account).
    #[arg(long, value_name = "NAME")]
    pub account: Vec<String>,
    /// How far back to read: an age (30d, 12h), a date (2026-01-31) or RFC 3339. RingCentral keeps
    /// 180 days.
    #[arg(long, value_name = "T", default_value = "30d")]
    pub since: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Classify with this lookup CSV instead of the app's shipped one (e.g. your extended
    /// copy, `ringcentral_audit_actions_local.csv`).
    #[arg(long, value_name = "FILE")]
    pub lookup: Option<PathBuf>,
}

/// Problems with the lookup file or the arguments.
#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    /// The lookup CSV is malformed.
    #[error(
        "{file}: {why}; the lookup needs a header with vendor_action, rc_category, rc_match and signature, and one row per line"
    )]
    Lookup {
        /// Which file.
        file: String,
        /// What is wrong.
        why: String,
    },
}

/// One lookup row: its columns by name, in the CSV's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupRow(pub BTreeMap<String, String>);

impl LookupRow {
    /// A column's value ("" when empty or absent).
    pub fn get(&self, column: &str) -> &str {
        self.0.get(column).map(String::as_str).unwrap_or("")
    }
}

/// The action lookup: rows in file order.
#[derive(Debug, Clone)]
pub struct ActionLookup {
    /// Header, in order.
    pub columns: Vec<String>,
    /// Rows, in file order (the order Splunk tries them in).
    pub rows: Vec<LookupRow>,
}

static SHIPPED: LazyLock<ActionLookup> = LazyLock::new(|| {
    ActionLookup::parse("ringcentral_audit_actions.csv", SHIPPED_LOOKUP)
        .expect("the shipped lookup is valid (tests/splunk_app.rs checks it)")
});

impl ActionLookup {
    /// The app's shipped lookup.
    pub fn shipped() -> &'static ActionLookup {
        &SHIPPED
    }

    /// Parses a lookup CSV: a header row, then rows of the same width; fields may be
    /// double-quoted (`""` is a quote). `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<ActionLookup, ActionsError> {
        let err = |why: String| ActionsError::Lookup {
            file: file.to_string(),
            why,
        };
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header =
            parse_csv_line(lines.next().ok_or_else(|| err("empty file".into()))?).map_err(&err)?;
        for required in ["vendor_action", "rc_category", "rc_match", "signature"] {
            if !header.iter().any(|h| h == required) {
                return Err(err(format!("no column {required}")));
            }
        }
        let mut rows = Vec::new();
        for (n, line) in lines.enumerate() {
            let fields = parse_csv_line(line).map_err(&err)?;
            if fields.len() != header.len() {
                return Err(err(format!(
                    "row {} has {} fields, the header {}: {line}",
                    n + 2,
                    fields.len(),
                    header.len()
                )));
            }
            rows.push(LookupRow(header.iter().cloned().zip(fields).collect()));
        }
        Ok(ActionLookup {
            columns: header,
            rows,
        })
    }

    /// The row Splunk's automatic lookup gives `action_id`: `match_type = WILDCARD(vendor_action)`
    /// (`*` is any run of characters, nothing else is special), `case_sensitive_match = false`,
    /// `max_matches = 1`, so the **first** matching row in file order.
    pub fn first_match(&self, action_id: &str) -> Option<&LookupRow> {
        self.rows
            .iter()
            .find(|row| wildcard_match(row.get("vendor_action"), action_id, false))
    }
}

fn parse_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        let field = fields.last_mut().expect("a field");
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err(format!("unterminated quote in: {line}"));
    }
    Ok(fields)
}

/// Splunk's WILDCARD lookup match: `*` is any run of characters (possibly empty); every other
/// character is literal (`?` too).
pub fn wildcard_match(pattern: &str, text: &str, case_sensitive: bool) -> bool {
    let (p, t) = if case_sensitive {
        (pattern.to_string(), text.to_string())
    } else {
        (pattern.to_lowercase(), text.to_lowercase())
    };
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !t.starts_with(first) || t.len() < first.len() + last.len() || !t.ends_with(last) {
        return false;
    }
    let mut rest = &t[first.len()..t.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// One distinct `actionId` of an account.
#[derive(Debug, Clone, Serialize)]
pub struct ActionSummary {
    /// The `actionId` (`(none)` for records without one).
    pub action_id: String,
    /// Records with it.
    pub count: u64,
    /// The first such record's `eventType`.
    pub event_type: Option<String>,
    /// The first such record's `details.parameters[].key` names.
    pub parameters: Vec<String>,
    /// The lookup's `rc_category` (`unknown` when only the catch-all row matched).
    pub category: String,
    /// The lookup's `rc_match` (`exact`, `guard`, `pattern` or `catch_all`).
    pub row_kind: String,
    /// The lookup row's `vendor_action` (the pattern that matched).
    pub row: String,
    /// The lookup row's `signature`.
    pub signature: String,
    /// True when the id falls through to `unknown`: no CIM data model, no alert sees it.
    pub unmapped: bool,
}

/// One account's inventory.
#[derive(Debug, Clone, Serialize)]
pub struct AccountInventory {
    /// The account's name in the config.
    pub account: String,
    /// Range read (RFC 3339).
    pub from: String,
    /// End of the range read.
    pub to: String,
    /// Records read.
    pub records: u64,
    /// False when RingCentral reported more records in some window than it returned (a window
    /// too small to split): counts may be short.
    pub complete: bool,
    /// Distinct ids, most frequent first.
    pub actions: Vec<ActionSummary>,
}

/// Counts `actionId`s, keeping an example of each. A record id seen before is not counted again:
/// windows share their boundary instant (the search bounds are inclusive), and record order
/// across pages is undocumented.
#[derive(Default)]
struct Tally {
    records: u64,
    by_id: BTreeMap<String, (u64, Option<String>, Vec<String>)>,
    seen: HashSet<String>,
}

impl Tally {
    fn add(&mut self, raw: &str) {
        let v: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
        if let Some(record_id) = v["id"].as_str()
            && !self.seen.insert(record_id.to_string())
        {
            return;
        }
        self.records += 1;
        let id = v["actionId"].as_str().unwrap_or("(none)").to_string();
        let entry = self.by_id.entry(id).or_insert_with(|| {
            let params = v
                .pointer("/details/parameters")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| p["key"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (0, v["eventType"].as_str().map(str::to_string), params)
        });
        entry.0 += 1;
    }

    fn summarize(self, lookup: &ActionLookup) -> Vec<ActionSummary> {
        let mut out: Vec<ActionSummary> = self
            .by_id
            .into_iter()
            .map(|(action_id, (count, event_type, parameters))| {
                let row = lookup.first_match(&action_id);
                let get = |c: &str| row.map(|r| r.get(c).to_string()).unwrap_or_default();
                let category = row.map_or(UNKNOWN.to_string(), |r| r.get("rc_category").into());
                ActionSummary {
                    unmapped: category == UNKNOWN || category.is_empty(),
                    category,
                    row_kind: get("rc_match"),
                    row: get("vendor_action"),
                    signature: get("signature"),
                    action_id,
                    count,
                    event_type,
                    parameters,
                }
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(a.action_id.cmp(&b.action_id)));
        out
    }
}

/// Reads `[from, to]` of one account page by page, in windows of at most a day; a window that
/// holds more than one search returns (10,000 records) is split in halves and read again, so
/// the counts are complete. Returns the tally and whether every window was read completely.
async fn read_account(
    client: &mut RcClient,
    account: &str,
    config: &Config,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    stats: &Stats,
) -> Result<(Tally, bool), RcError> {
    let day = TimeDelta::days(1);
    let mut windows = Vec::new();
    let mut start = from;
    while start < to {
        let end = (start + day).min(to);
        windows.push((start, end));
        start = end;
    }
    windows.reverse(); // a stack: oldest first
    let mut total = Tally::default();
    let mut complete = true;
    while let Some((a, b)) = windows.pop() {
        let mut pager = Pager::new(account, a, b, &config.poll);
        // A window counts only once read completely (a window that must be split is read again
        // as two halves).
        let mut window: Vec<Box<serde_json::value::RawValue>> = Vec::new();
        let mut split = false;
        while let Some((page, _last)) = pager.next(client, stats).await? {
            // More records than one search returns: halve the window. Each half holds fewer
            // records, so this ends. (Fewer records than reported is upstream's inconsistency,
            // not ours to split over: it is reported as `complete: false`.)
            let too_many = page
                .paging
                .as_ref()
                .and_then(|p| p.total_found)
                .is_some_and(|f| f > API_RECORD_LIMIT);
            if too_many && (b - a).num_milliseconds() >= 2 {
                split = true;
                break;
            }
            window.extend(page.records);
        }
        if split {
            let mid = a + (b - a) / 2;
            windows.push((mid, b));
            windows.push((a, mid));
            continue;
        }
        complete &= !(pager.needs_split() || pager.count_mismatch());
        for raw in &window {
            total.add(raw.get());
        }
    }
    Ok((total, complete))
}

/// What `actions` found: each readable account's inventory, and the accounts it could not
/// read.
#[derive(Debug, Clone)]
pub struct ActionsReport {
    /// Per account read.
    pub inventories: Vec<AccountInventory>,
    /// Accounts that could not be read.
    pub errors: Vec<AccountError>,
    /// JSON on stdout instead of text.
    pub json: bool,
    /// Where the range starts when RingCentral's 180 days moved `--since` up.
    pub clamped_from: Option<DateTime<Utc>>,
}

/// Runs `actions` with the config at `path`. Argument problems are errors (exit 2).
pub async fn command(path: &std::path::Path, args: &ActionsArgs) -> Result<ActionsReport, Error> {
    let config = &load_config(path)?;
    let lookup = match &args.lookup {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ActionsError::Lookup {
                file: path.display().to_string(),
                why: format!("cannot read it: {e}"),
            });
            let text = text.map_err(|e| Error::Other(e.into()))?;
            ActionLookup::parse(&path.display().to_string(), &text)
                .map_err(|e| Error::Other(e.into()))?
        }
        None => ActionLookup::shipped().clone(),
    };
    let now = Utc::now();
    let since = parse_time("--since", &args.since, now)?;
    let range = plan_range(since, None, now, config.poll.settle_delay)?;
    let known: Vec<String> = config.accounts.iter().map(|a| a.name.clone()).collect();
    let names = select_accounts(&known, &args.account)?;
    let http = ringcentral_http(Options::default().rc_timeout)?;
    let stats = Arc::new(Stats::default());
    let mut report = ActionsReport {
        inventories: Vec::new(),
        errors: Vec::new(),
        json: args.json,
        clamped_from: range.clamped.then_some(range.from),
    };
    for account in config.accounts.iter().filter(|a| names.contains(&a.name)) {
        match inventory(
            account, config, &http, &stats, &lookup, range.from, range.to,
        )
        .await
        {
            Ok(inv) => report.inventories.push(inv),
            Err(e) => report.errors.push(AccountError {
                account: account.name.clone(),
                reason: e.to_string(),
                config: e.is_config(),
            }),
        }
    }
    Ok(report)
}

impl Code for ActionsReport {
    /// 0, 1 when an account could not be read, 78 when that was its credentials or
    /// permissions.
    fn exit_code(&self) -> u8 {
        Outcome::worst(self.errors.iter().map(AccountError::outcome)).exit_code()
    }
}

impl Report for ActionsReport {
    fn print(&self) -> Result<(), Error> {
        for e in &self.errors {
            eprintln!("actions: account {}: {}", e.account, e.reason);
        }
        if self.json {
            let doc = serde_json::json!({ "accounts": self.inventories });
            let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::Other(e.into()))?;
            println!("{text}");
        } else {
            print!("{}", render(&self.inventories));
        }
        if let Some(from) = self.clamped_from {
            eprintln!(
                "actions: RingCentral keeps 180 days; read from {}",
                rfc3339_millis(from)
            );
        }
        Ok(())
    }
}

async fn inventory(
    account: &AccountConfig,
    config: &Config,
    http: &reqwest::Client,
    stats: &Arc<Stats>,
    lookup: &ActionLookup,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<AccountInventory, RcError> {
    let mut client = RcClient::new(
        http.clone(),
        account,
        Options::default().retry,
        stats.clone(),
    )
    .with_max_attempts(Some(5));
    let (tally, complete) =
        read_account(&mut client, &account.name, config, from, to, stats).await?;
    Ok(AccountInventory {
        account: account.name.clone(),
        from: rfc3339_millis(from),
        to: rfc3339_millis(to),
        records: tally.records,
        complete,
        actions: tally.summarize(lookup),
    })
}

/// The text report: per account, one line per action id, unmapped ones flagged, then what to do
/// about them.
pub fn render(inventories: &[AccountInventory]) -> String {
    let mut s = String::new();
    for inv in inventories {
        let unmapped: Vec<&ActionSummary> = inv.actions.iter().filter(|a| a.unmapped).collect();
        let _ = writeln!(
            s,
            "account {}: {} record(s) from {} to {}, {} distinct action id(s), {} unmapped{}",
            inv.account,
            inv.records,
            inv.from,
            inv.to,
            inv.actions.len(),
            unmapped.len(),
            if inv.complete {
                ""
            } else {
                " (RingCentral returned fewer records than it reported: counts may be short)"
            }
        );
        let width = inv
            .actions
            .iter()
            .map(|a| a.action_id.len())
            .max()
            .unwrap_or(0)
            .max("ACTION ID".len());
        let _ = writeln!(
            s,
            "  {:>7}  {:<width$}  {:<18}  {:<10}  {:<24}  {:<10}  PARAMETERS",
            "COUNT", "ACTION ID", "CATEGORY", "ROW", "PATTERN", "EVENT TYPE"
        );
        for a in &inv.actions {
            let category = if a.unmapped {
                format!("{} UNMAPPED", a.category)
            } else {
                a.category.clone()
            };
            let _ = writeln!(
                s,
                "  {:>7}  {:<width$}  {:<18}  {:<10}  {:<24}  {:<10}  {}",
                a.count,
                a.action_id,
                category,
                a.row_kind,
                a.row,
                a.event_type.as_deref().unwrap_or("-"),
                a.parameters.join(",")
            );
        }
        if !unmapped.is_empty() {
            let ids: Vec<&str> = unmapped.iter().map(|a| a.action_id.as_str()).collect();
            let _ = writeln!(
                s,
                "  {} id(s) fall through to `unknown` (no CIM data model, no alert): {}. If one is a failed login, lockout or account change, add an exact row for it (see the app README, \"The action lookup\").",
                ids.len(),
                ids.join(", ")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wildcard_matcher_is_splunks() {
        assert!(wildcard_match("*", "", true));
        assert!(wildcard_match("*LOGIN*FAIL*", "LOGIN_FAILED", true));
        assert!(wildcard_match("LOCK_*", "LOCK_USER", true));
        assert!(!wildcard_match("LOCK_*", "UNLOCK_USER", true));
        assert!(!wildcard_match("*LOCKED*", "account_locked", true));
        assert!(wildcard_match("*LOCKED*", "account_locked", false));
        assert!(!wildcard_match("A*A", "A", true));
        assert!(wildcard_match("A*A", "AA", true));
        assert!(!wildcard_match("LOGIN?", "LOGIN1", true), "? is literal");
        assert!(!wildcard_match("EXACT", "EXACT_NOT", true));
        assert!(wildcard_match("*_LOCK", "ACCOUNT_LOCK", true));
        assert!(!wildcard_match("*_LOCK", "CHANGE_CLOCK", true));
    }

    #[test]
    fn first_match_is_file_order_and_case_insensitive() {
        let l = ActionLookup::parse(
            "t.csv",
            "vendor_action,rc_category,rc_match,signature\n*LOGIN*UNSUCCESS*,authentication,pattern,\"Failed, login\"\n*LOGIN*SUCCESS*,authentication,pattern,ok\n*,unknown,catch_all,x\n",
        )
        .unwrap();
        assert_eq!(
            l.first_match("login_unsuccessfully")
                .unwrap()
                .get("signature"),
            "Failed, login"
        );
        assert_eq!(
            l.first_match("LOGIN_SUCCESS").unwrap().get("signature"),
            "ok"
        );
        assert_eq!(
            l.first_match("OTHER").unwrap().get("rc_category"),
            "unknown"
        );
        assert!(
            ActionLookup::parse("t.csv", "a,b\n1,2\n").is_err(),
            "required columns"
        );
        assert!(
            ActionLookup::parse(
                "t.csv",
                "vendor_action,rc_category,rc_match,signature\nA,b\n"
            )
            .is_err(),
            "row width"
        );
    }

    #[test]
    fn the_tally_keeps_an_example_and_flags_ids_only_the_catch_all_matches() {
        let mut t = Tally::default();
        t.add(r#"{"actionId":"LOGIN_SUCCESSFULLY","eventType":"Create","details":{"parameters":[{"key":"appName","value":"x"}]}}"#);
        t.add(r#"{"actionId":"LOGIN_SUCCESSFULLY","eventType":"Other"}"#);
        t.add(r#"{"actionId":"SOMETHING_NEW","eventType":"Update"}"#);
        t.add("{}");
        t.add(r#"{"id":"a","actionId":"X"}"#);
        t.add(r#"{"id":"a","actionId":"X"}"#);
        assert_eq!(t.records, 5, "a record id is counted once");
        let s = t.summarize(ActionLookup::shipped());
        assert_eq!(s[0].action_id, "LOGIN_SUCCESSFULLY");
        assert_eq!(
            (s[0].count, s[0].event_type.as_deref()),
            (2, Some("Create"))
        );
        assert_eq!(s[0].parameters, ["appName"]);
        assert_eq!(
            (s[0].category.as_str(), s[0].unmapped),
            ("authentication", false)
        );
        let new = s.iter().find(|a| a.action_id == "SOMETHING_NEW").unwrap();
        assert_eq!(
            (new.category.as_str(), new.row_kind.as_str(), new.unmapped),
            ("unknown", "catch_all", true)
        );
        assert!(s.iter().any(|a| a.action_id == "(none)" && a.unmapped));
    }
}
