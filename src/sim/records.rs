//! Realistic RingCentral audit-trail records (`AccountHistoryPublicRecord`) for the simulator,
//! the demo and benchmarks.
//!
//! What "realistic" means here, from the reference and public samples:
//! - every field of the schema is filled where it applies, and omitted where it does not
//!   (company-level targets have no `extensionNumber`), so consumers meet optional fields;
//! - `id` is usually a UUID, but about 1 in 50 is not (`4053472004:1722941419442`);
//! - `eventTime` is RFC 3339 UTC with milliseconds (`2024-08-06T10:50:19.442Z`);
//! - `eventType` casing varies between actions (`UPDATE`, `Create`), as in real data;
//! - each account has a fixed pool of about 30 users, so the same people recur: a user fails to
//!   log in a few times and is then locked out, admins change other users' roles;
//! - a record is about 1 KB of JSON on average.
//!
//! Everything is driven by a caller-supplied [`fastrand::Rng`], so a seed reproduces the data.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Map, Value, json};

/// The only `actionId` values RingCentral has published: `LOGIN_SUCCESSFULLY` (its audit-trail
/// demo, a record with `eventType` `Create`), `CHANGE_USER_ROLE` (with `oldRoleName` /
/// `newRoleName` parameters), `CHANGE_SECRET_INFO` and `CHANGE_USER_INFO` (the API reference's
/// examples). Every other id in [`ACTION_IDS`] is **invented** for the simulator.
pub const PUBLISHED_ACTION_IDS: &[&str] = &[
    "LOGIN_SUCCESSFULLY",
    "CHANGE_USER_ROLE",
    "CHANGE_SECRET_INFO",
    "CHANGE_USER_INFO",
];

/// Every action id the generator emits; the ones not in [`PUBLISHED_ACTION_IDS`] are invented
/// (marked below).
///
/// The invented ids are plausible names in RingCentral's style, so the forwarder and the Splunk
/// app are exercised with ids they do not know in advance. RingCentral publishes **no** action
/// id strings for failed logins, account lockouts, logouts, MFA or password resets (the guide
/// only says they are in the audit trail): `LOGIN_FAILED`, `LOGIN_FAILED_WRONG_PASSWORD`,
/// `ACCOUNT_LOCKED`, `USER_LOCKED_OUT` and `LOGOUT` are guesses. Neither the forwarder nor the
/// app may depend on them (the app's lookup files ids it cannot place as `unknown`; `rc-audit-hec
/// actions` lists a tenant's real ids).
pub const ACTION_IDS: &[&str] = &[
    "LOGIN_SUCCESSFULLY",
    "LOGIN_FAILED",                // invented
    "LOGIN_FAILED_WRONG_PASSWORD", // invented
    "ACCOUNT_LOCKED",              // invented
    "USER_LOCKED_OUT",             // invented
    "LOGOUT",                      // invented
    "CHANGE_SECRET_INFO",
    "CHANGE_USER_INFO",
    "CHANGE_USER_ROLE",
    "CREATE_USER",                  // invented
    "DELETE_USER",                  // invented
    "ENABLE_USER",                  // invented
    "DISABLE_USER",                 // invented
    "CHANGE_CALL_HANDLING",         // invented
    "CHANGE_ANSWERING_RULE",        // invented
    "CHANGE_VOICEMAIL_SETTINGS",    // invented
    "CHANGE_CALLER_ID",             // invented
    "CHANGE_EMERGENCY_ADDRESS",     // invented
    "CHANGE_COMPANY_INFO",          // invented
    "CHANGE_BUSINESS_HOURS",        // invented
    "CHANGE_COMPANY_CALL_HANDLING", // invented
    "CHANGE_IVR_MENU",              // invented
    "CHANGE_CALL_QUEUE_MEMBERS",    // invented
    "ADD_PHONE_NUMBER",             // invented
    "REMOVE_PHONE_NUMBER",          // invented
    "ASSIGN_PHONE_NUMBER",          // invented
    "ADD_DEVICE",                   // invented
    "DELETE_DEVICE",                // invented
    "CHANGE_DEVICE_SETTINGS",       // invented
    "CREATE_SITE",                  // invented
    "CHANGE_SITE_INFO",             // invented
    "CHANGE_USER_TEMPLATE",         // invented
    "APPLY_USER_TEMPLATE",          // invented
    "CHANGE_MFA_SETTINGS",          // invented
];

/// What an action is about; decides initiator, target and parameters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The user acts on their own session: initiator and target are the same user.
    Session,
    /// Something done to one user's extension, by the user or an admin.
    User,
    /// An admin-only change to another user (roles, creation, deletion).
    AdminOnUser,
    /// Company-wide setting: target `Company`, `objectId` "0".
    Company,
    /// Account-level object (numbers, sites, security settings): target `Account`.
    Account,
    /// User template: target `Template`.
    Template,
}

/// One catalogue entry: the id, its `eventType` as real data spells it, and how common it is.
struct Action {
    /// The `actionId`.
    id: &'static str,
    /// The `eventType`, with the inconsistent casing real data has.
    event_type: &'static str,
    /// Relative frequency.
    weight: u32,
    /// Shape of the record.
    kind: Kind,
}

/// The catalogue, in the same order as [`ACTION_IDS`] (a test checks they agree).
const ACTIONS: &[Action] = &[
    act("LOGIN_SUCCESSFULLY", "Create", 300, Kind::Session),
    act("LOGIN_FAILED", "Create", 25, Kind::Session),
    act("LOGIN_FAILED_WRONG_PASSWORD", "Create", 35, Kind::Session),
    act("ACCOUNT_LOCKED", "UPDATE", 3, Kind::Session),
    act("USER_LOCKED_OUT", "Update", 3, Kind::Session),
    act("LOGOUT", "Create", 60, Kind::Session),
    act("CHANGE_SECRET_INFO", "UPDATE", 40, Kind::User),
    act("CHANGE_USER_INFO", "UPDATE", 80, Kind::User),
    act("CHANGE_USER_ROLE", "UPDATE", 20, Kind::AdminOnUser),
    act("CREATE_USER", "CREATE", 10, Kind::AdminOnUser),
    act("DELETE_USER", "DELETE", 5, Kind::AdminOnUser),
    act("ENABLE_USER", "Update", 4, Kind::AdminOnUser),
    act("DISABLE_USER", "Update", 4, Kind::AdminOnUser),
    act("CHANGE_CALL_HANDLING", "UPDATE", 40, Kind::User),
    act("CHANGE_ANSWERING_RULE", "Update", 20, Kind::User),
    act("CHANGE_VOICEMAIL_SETTINGS", "Update", 15, Kind::User),
    act("CHANGE_CALLER_ID", "UPDATE", 12, Kind::User),
    act("CHANGE_EMERGENCY_ADDRESS", "UPDATE", 6, Kind::User),
    act("CHANGE_COMPANY_INFO", "UPDATE", 8, Kind::Company),
    act("CHANGE_BUSINESS_HOURS", "UPDATE", 8, Kind::Company),
    act("CHANGE_COMPANY_CALL_HANDLING", "UPDATE", 6, Kind::Company),
    act("CHANGE_IVR_MENU", "Update", 6, Kind::Company),
    act("CHANGE_CALL_QUEUE_MEMBERS", "UPDATE", 10, Kind::User),
    act("ADD_PHONE_NUMBER", "CREATE", 8, Kind::Account),
    act("REMOVE_PHONE_NUMBER", "DELETE", 4, Kind::Account),
    act("ASSIGN_PHONE_NUMBER", "UPDATE", 10, Kind::AdminOnUser),
    act("ADD_DEVICE", "Create", 8, Kind::AdminOnUser),
    act("DELETE_DEVICE", "Delete", 4, Kind::AdminOnUser),
    act("CHANGE_DEVICE_SETTINGS", "Update", 8, Kind::User),
    act("CREATE_SITE", "CREATE", 2, Kind::Account),
    act("CHANGE_SITE_INFO", "UPDATE", 4, Kind::Account),
    act("CHANGE_USER_TEMPLATE", "UPDATE", 3, Kind::Template),
    act("APPLY_USER_TEMPLATE", "Update", 3, Kind::Template),
    act("CHANGE_MFA_SETTINGS", "UPDATE", 3, Kind::Account),
];

/// `const` constructor for [`ACTIONS`] rows.
const fn act(id: &'static str, event_type: &'static str, weight: u32, kind: Kind) -> Action {
    Action {
        id,
        event_type,
        weight,
        kind,
    }
}

/// True for the lockout actions, which [`generate_records`] always precedes with failures.
fn is_lockout(id: &str) -> bool {
    id == "ACCOUNT_LOCKED" || id == "USER_LOCKED_OUT"
}

/// Looks an action up by id (all ids used internally are in the catalogue).
fn action_by_id(id: &str) -> &'static Action {
    ACTIONS.iter().find(|a| a.id == id).unwrap_or(&ACTIONS[0])
}

/// Users per account.
const POOL_SIZE: usize = 30;
/// The first users of the pool are administrators; they perform the admin actions.
const ADMINS: usize = 3;

const FIRST_NAMES: &[&str] = &[
    "Alice",
    "Bob",
    "Charlie",
    "Diana",
    "Ethan",
    "Fatima",
    "George",
    "Hannah",
    "Ivan",
    "Julia",
    "Kenji",
    "Laura",
    "Mohammed",
    "Nina",
    "Oscar",
    "Priya",
    "Quentin",
    "Rosa",
    "Samuel",
    "Tanya",
    "Umar",
    "Valentina",
    "William",
    "Xiu",
    "Yusuf",
    "Zoe",
    "Marcus",
    "Elena",
    "Daniel",
    "Sofia",
];
const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Nakamura",
    "Okafor",
];
const STANDARD_ROLES: &[&str] = &[
    "Standard",
    "Standard",
    "Standard",
    "Standard (International)",
    "Office Manager",
    "Call Queue Supervisor",
    "Department Manager",
];
const ADMIN_ROLES: &[&str] = &["Super Admin", "Super Admin", "Phone System Admin"];
const SITE_NAMES: &[&str] = &["Main Site", "Denver Office", "London Office"];
const DEPARTMENTS: &[&str] = &[
    "Sales",
    "Support",
    "Engineering",
    "Finance",
    "Marketing",
    "Operations",
    "Legal",
];
const JOB_TITLES: &[&str] = &[
    "Account Executive",
    "Support Engineer",
    "Software Engineer",
    "Controller",
    "Marketing Specialist",
    "Operations Lead",
    "Counsel",
];
const APPS: &[&str] = &[
    "RingCentral App",
    "RingCentral Admin Portal",
    "RingCentral Mobile",
    "RingCentral Phone for Desktop",
    "Service Web",
];
const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "RingCentral/24.2.30 (iPhone; iOS 17.5.1; Scale/3.00) CFNetwork/1496.0.7 Darwin/23.5.0",
    "RingCentral/24.2.30.1234 (Windows 10.0.19045; x64) Electron/29.4.2 Chrome/122.0.6261.156",
    "okhttp/4.12.0 RingCentral-Android/24.2.30 (Pixel 8; Android 14)",
];
const LOGIN_METHODS: &[&str] = &["Password", "Password", "SSO", "Password + MFA", "JWT"];
const FAILED_LOGIN_REASONS: &[&str] = &[
    "Invalid credentials",
    "Unknown login name",
    "MFA verification failed",
    "SSO assertion rejected",
];
const COMMENTS: &[&str] = &[
    "Changed in Admin Portal",
    "Updated via API",
    "Bulk update from CSV import",
    "Requested in ticket INC-20418",
];
const DEVICE_MODELS: &[&str] = &[
    "Polycom VVX 450",
    "Yealink T54W",
    "Cisco SPA504G",
    "Poly Edge E350",
    "Softphone",
];

/// One user of an account's pool; the same people recur across records.
struct User {
    extension_id: String,
    extension_number: String,
    name: String,
    role: &'static str,
    site_id: String,
    email: String,
    /// The address this user usually comes from.
    ip: String,
}

/// The fixed users and sites of one account, derived from the account id alone.
struct Pool {
    users: Vec<User>,
    sites: Vec<(String, &'static str)>,
}

/// FNV-1a: a stable hash so an account's pool never depends on the caller's seed.
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A RingCentral-looking 12-digit id (`402539300008`).
fn rc_id(rng: &mut fastrand::Rng) -> String {
    format!(
        "40{:07}00{}",
        rng.u32(..10_000_000),
        if rng.bool() { 4 } else { 8 }
    )
}

impl Pool {
    fn for_account(account_id: &str) -> Self {
        let mut rng = fastrand::Rng::with_seed(stable_hash(account_id));
        let sites: Vec<(String, &'static str)> = SITE_NAMES
            .iter()
            .map(|name| (format!("8718{:05}", rng.u32(..100_000)), *name))
            .collect();
        let mut first: Vec<&str> = FIRST_NAMES.to_vec();
        let mut last: Vec<&str> = LAST_NAMES.to_vec();
        rng.shuffle(&mut first);
        rng.shuffle(&mut last);
        let users = (0..POOL_SIZE)
            .map(|i| {
                let (f, l) = (first[i % first.len()], last[i % last.len()]);
                let role = if i < ADMINS {
                    ADMIN_ROLES[i % ADMIN_ROLES.len()]
                } else {
                    STANDARD_ROLES[rng.usize(..STANDARD_ROLES.len())]
                };
                User {
                    extension_id: rc_id(&mut rng),
                    extension_number: (101 + i).to_string(),
                    name: format!("{f} {l}"),
                    role,
                    site_id: sites[rng.usize(..sites.len())].0.clone(),
                    email: format!("{}.{}@example.com", f.to_lowercase(), l.to_lowercase()),
                    ip: format!("10.{}.{}.{}", rng.u8(1..255), rng.u8(..255), rng.u8(1..255)),
                }
            })
            .collect();
        Self { users, sites }
    }

    fn user(&self, rng: &mut fastrand::Rng) -> &User {
        &self.users[rng.usize(..self.users.len())]
    }

    fn admin(&self, rng: &mut fastrand::Rng) -> &User {
        &self.users[rng.usize(..ADMINS)]
    }
}

/// Picks from a non-empty list.
fn pick<'a>(rng: &mut fastrand::Rng, list: &[&'a str]) -> &'a str {
    list[rng.usize(..list.len())]
}

/// An address outside the company (documentation ranges), as failed logins often come from.
fn external_ip(rng: &mut fastrand::Rng) -> String {
    let net = pick(rng, &["203.0.113", "198.51.100", "192.0.2"]);
    format!("{net}.{}", rng.u8(1..255))
}

/// A record's `id`: a UUID, or about 1 in 50 times an `extension:millis` id as some real ids are.
fn record_id(rng: &mut fastrand::Rng, user: &User, time: DateTime<Utc>) -> String {
    if rng.u32(..50) == 0 {
        format!("{}:{}", &user.extension_id[..10], time.timestamp_millis())
    } else {
        let mut bytes = [0u8; 16];
        rng.fill(&mut bytes);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }
}

/// Picks an action by weight.
fn weighted_action(rng: &mut fastrand::Rng) -> &'static Action {
    let total: u32 = ACTIONS.iter().map(|a| a.weight).sum();
    let mut roll = rng.u32(..total);
    for a in ACTIONS {
        if roll < a.weight {
            return a;
        }
        roll -= a.weight;
    }
    &ACTIONS[0]
}

/// Knobs for [`build`] that [`generate_records`] uses to script a burst of failed logins
/// followed by a lockout for one user.
#[derive(Default)]
struct Script<'a> {
    user: Option<&'a User>,
    failed_attempts: Option<usize>,
}

/// One record in the shape of `AccountHistoryPublicRecord`, as real data would have it.
///
/// `rng` drives every choice; the account's user pool comes from `account_id` alone, so the same
/// users recur across calls.
pub fn generate_record(
    rng: &mut fastrand::Rng,
    account_id: &str,
    account_name: &str,
    event_time: DateTime<Utc>,
) -> Value {
    let pool = Pool::for_account(account_id);
    let action = weighted_action(rng);
    build(
        rng,
        &pool,
        account_id,
        account_name,
        action,
        event_time,
        &Script::default(),
    )
}

/// `n` records for one account with `eventTime`s spread over `[from, to)`, in ascending time
/// order, identical for the same `seed` and account.
///
/// Now and then a user fails to log in two to four times within a minute and is then locked out,
/// so lockout detection has something to find.
pub fn generate_records(
    seed: u64,
    account_id: &str,
    account_name: &str,
    n: usize,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Value> {
    let mut rng = fastrand::Rng::with_seed(seed ^ stable_hash(account_id));
    let pool = Pool::for_account(account_id);
    let span_ms = (to - from).num_milliseconds().max(1);
    let last = from + TimeDelta::milliseconds(span_ms - 1);
    let mut times: Vec<DateTime<Utc>> = (0..n)
        .map(|_| from + TimeDelta::milliseconds(rng.i64(0..span_ms)))
        .collect();
    times.sort_unstable();

    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let mut action = weighted_action(&mut rng);
        let failures = rng.usize(2..=4);
        let lockout = is_lockout(action.id);
        if (lockout || rng.u32(..150) == 0) && n - i > failures {
            // A lockout burst: failures then a lockout, seconds apart, same user.
            let user = &pool.users[rng.usize(ADMINS..POOL_SIZE)];
            let mut time = times[i];
            for attempt in 1..=failures + 1 {
                let id = if attempt > failures {
                    pick(&mut rng, &["ACCOUNT_LOCKED", "USER_LOCKED_OUT"])
                } else if rng.u32(..4) == 0 {
                    "LOGIN_FAILED"
                } else {
                    "LOGIN_FAILED_WRONG_PASSWORD"
                };
                let script = Script {
                    user: Some(user),
                    failed_attempts: Some(attempt.min(failures)),
                };
                out.push(build(
                    &mut rng,
                    &pool,
                    account_id,
                    account_name,
                    action_by_id(id),
                    time.min(last),
                    &script,
                ));
                time += TimeDelta::milliseconds(rng.i64(2_000..20_000));
            }
            i += failures + 1;
        } else {
            if lockout {
                // No room left for the failures that must precede a lockout.
                action = action_by_id("LOGIN_FAILED_WRONG_PASSWORD");
            }
            out.push(build(
                &mut rng,
                &pool,
                account_id,
                account_name,
                action,
                times[i],
                &Script::default(),
            ));
            i += 1;
        }
    }
    // Bursts may overtake later base times; keep the promise of ascending order (stable, so a
    // burst clamped to `last` keeps its failures before its lockout).
    out.sort_by_key(|r| r["eventTime"].as_str().map(str::to_owned));
    out
}

/// Builds one record for `action`.
fn build(
    rng: &mut fastrand::Rng,
    pool: &Pool,
    account_id: &str,
    account_name: &str,
    action: &Action,
    time: DateTime<Utc>,
    script: &Script<'_>,
) -> Value {
    let target_user = script.user.unwrap_or_else(|| pool.user(rng));
    let initiator = match action.kind {
        Kind::Session => target_user,
        Kind::User if rng.u32(..10) < 6 => target_user,
        _ => pool.admin(rng),
    };
    let is_failure = action.id.starts_with("LOGIN_FAILED") || is_lockout(action.id);
    let client_ip = if (is_failure && rng.u32(..10) < 4) || rng.u32(..20) == 0 {
        external_ip(rng)
    } else {
        initiator.ip.clone()
    };

    let mut target = Map::new();
    match action.kind {
        Kind::Session | Kind::User | Kind::AdminOnUser => {
            target.insert("objectId".into(), json!(target_user.extension_id));
            target.insert("objectType".into(), json!("Extension"));
            target.insert("name".into(), json!(target_user.name));
            target.insert(
                "extensionNumber".into(),
                json!(target_user.extension_number),
            );
            target.insert("siteId".into(), json!(target_user.site_id));
        }
        Kind::Company => {
            target.insert("objectId".into(), json!("0"));
            target.insert("objectType".into(), json!("Company"));
            target.insert("name".into(), json!(account_name));
        }
        Kind::Account => {
            target.insert("objectId".into(), json!(account_id));
            target.insert("objectType".into(), json!("Account"));
            target.insert("name".into(), json!(account_name));
            if action.id.contains("SITE") {
                target.insert(
                    "siteId".into(),
                    json!(pool.sites[rng.usize(..pool.sites.len())].0),
                );
            }
        }
        Kind::Template => {
            target.insert(
                "objectId".into(),
                json!(format!("7{:08}", rng.u32(..100_000_000))),
            );
            target.insert("objectType".into(), json!("Template"));
            target.insert(
                "name".into(),
                json!(format!("{} Team Template", pick(rng, DEPARTMENTS))),
            );
        }
    }

    let mut pairs = parameters(rng, pool, action, initiator, target_user, script);
    pairs.extend(context_parameters(rng, action, initiator));
    let parameters: Vec<Value> = pairs
        .into_iter()
        .map(|(key, value)| json!({ "key": key, "value": value }))
        .collect();

    let mut record = Map::new();
    record.insert("id".into(), json!(record_id(rng, initiator, time)));
    record.insert(
        "eventTime".into(),
        json!(time.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    record.insert("actionId".into(), json!(action.id));
    record.insert("eventType".into(), json!(action.event_type));
    record.insert("accountId".into(), json!(account_id));
    record.insert("accountName".into(), json!(account_name));
    record.insert(
        "initiator".into(),
        json!({
            "extensionId": initiator.extension_id,
            "extensionNumber": initiator.extension_number,
            "name": initiator.name,
            "role": initiator.role,
        }),
    );
    record.insert("target".into(), Value::Object(target));
    record.insert("clientIp".into(), json!(client_ip));
    if rng.u32(..4) == 0 && !matches!(action.kind, Kind::Session) {
        record.insert("comment".into(), json!(pick(rng, COMMENTS)));
    }
    record.insert("details".into(), json!({ "parameters": parameters }));
    Value::Object(record)
}

/// OAuth app ids requests come from (RingCentral's own apps and a couple of integrations).
const APP_IDS: &[&str] = &[
    "eac8797af1b3502F2CEAAEECAC3Ed378AA7858A386656f28A008b0c638A754B1",
    "7ZyDaJ8jRPyrQ3MEXvJXsg",
    "hEpE8xTZQUGxMz1fRZ8B5A",
    "YCWFuqW8T7-GXk8mLTTe0w",
];

/// Parameters every record carries, like the request context real records include.
fn context_parameters(
    rng: &mut fastrand::Rng,
    action: &Action,
    initiator: &User,
) -> Vec<(String, String)> {
    let mut request = [0u8; 16];
    rng.fill(&mut request);
    let mut v = vec![
        (
            "requestId".to_owned(),
            uuid::Builder::from_random_bytes(request)
                .into_uuid()
                .to_string(),
        ),
        (
            "sessionId".to_owned(),
            format!("{:016x}{:016x}", rng.u64(..), rng.u64(..)),
        ),
        ("appId".to_owned(), pick(rng, APP_IDS).to_owned()),
        ("brand".to_owned(), "RingCentral MVP".to_owned()),
    ];
    if action.kind == Kind::Session {
        v.push(("loginName".to_owned(), initiator.email.clone()));
        v.push((
            "location".to_owned(),
            pick(
                rng,
                &[
                    "San Francisco, CA, US",
                    "Denver, CO, US",
                    "London, GB",
                    "Unknown",
                ],
            )
            .to_owned(),
        ));
    }
    v
}

/// The `details.parameters` of one record, as `(key, value)` pairs.
fn parameters(
    rng: &mut fastrand::Rng,
    pool: &Pool,
    action: &Action,
    initiator: &User,
    target: &User,
    script: &Script<'_>,
) -> Vec<(String, String)> {
    let p = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let attempts = script
        .failed_attempts
        .unwrap_or_else(|| rng.usize(1..=3))
        .to_string();
    match action.id {
        "LOGIN_SUCCESSFULLY" => vec![
            p("appName", pick(rng, APPS)),
            p("loginMethod", pick(rng, LOGIN_METHODS)),
            p("userAgent", pick(rng, USER_AGENTS)),
        ],
        "LOGOUT" => vec![
            p("appName", pick(rng, APPS)),
            p("userAgent", pick(rng, USER_AGENTS)),
        ],
        "LOGIN_FAILED" => vec![
            p("appName", pick(rng, APPS)),
            p("reason", pick(rng, FAILED_LOGIN_REASONS)),
            p("userAgent", pick(rng, USER_AGENTS)),
        ],
        "LOGIN_FAILED_WRONG_PASSWORD" => vec![
            p("appName", pick(rng, APPS)),
            p("failedAttempts", &attempts),
            p("userAgent", pick(rng, USER_AGENTS)),
        ],
        "ACCOUNT_LOCKED" | "USER_LOCKED_OUT" => vec![
            p("reason", "Too many failed login attempts"),
            p("failedAttempts", &attempts),
            p(
                "lockoutDuration",
                pick(
                    rng,
                    &["15 minutes", "30 minutes", "Until unlocked by admin"],
                ),
            ),
            p("userAgent", pick(rng, USER_AGENTS)),
        ],
        "CHANGE_SECRET_INFO" => {
            let mut v = vec![p("settingName", "Password")];
            if initiator.extension_id != target.extension_id {
                v.push(p("changedBy", "Administrator reset"));
                v.push(p("forceChangeOnNextLogin", "true"));
            } else {
                v.push(p("appName", pick(rng, APPS)));
            }
            v
        }
        "CHANGE_USER_INFO" => match rng.u32(..4) {
            0 => vec![
                p("fieldName", "email"),
                p("oldValue", &target.email),
                p(
                    "newValue",
                    &target.email.replace("@example.com", "@corp.example.com"),
                ),
            ],
            1 => vec![
                p("fieldName", "department"),
                p("oldValue", pick(rng, DEPARTMENTS)),
                p("newValue", pick(rng, DEPARTMENTS)),
            ],
            2 => vec![
                p("fieldName", "jobTitle"),
                p("oldValue", pick(rng, JOB_TITLES)),
                p("newValue", pick(rng, JOB_TITLES)),
            ],
            _ => vec![
                p("fieldName", "contactPhone"),
                p("oldValue", &format!("+1650555{:04}", rng.u32(..10_000))),
                p("newValue", &format!("+1650555{:04}", rng.u32(..10_000))),
            ],
        },
        "CHANGE_USER_ROLE" => {
            let roles = [STANDARD_ROLES, ADMIN_ROLES].concat();
            vec![
                p("oldRoleName", target.role),
                p("newRoleName", pick(rng, &roles)),
            ]
        }
        "CREATE_USER" => vec![
            p("extensionNumber", &target.extension_number),
            p("email", &target.email),
            p("roleName", target.role),
            p("siteName", pick(rng, SITE_NAMES)),
        ],
        "DELETE_USER" => vec![
            p("extensionNumber", &target.extension_number),
            p("name", &target.name),
        ],
        "ENABLE_USER" => vec![p("oldStatus", "Disabled"), p("newStatus", "Enabled")],
        "DISABLE_USER" => vec![p("oldStatus", "Enabled"), p("newStatus", "Disabled")],
        "CHANGE_CALL_HANDLING" | "CHANGE_ANSWERING_RULE" => vec![
            p(
                "ruleName",
                pick(
                    rng,
                    &["Work Hours", "After Hours", "Holiday", "Custom Rule 1"],
                ),
            ),
            p(
                "settingName",
                pick(rng, &["Call forwarding", "Ring mode", "Voicemail greeting"]),
            ),
            p(
                "oldValue",
                pick(rng, &["Sequential", "Simultaneous", "Voicemail"]),
            ),
            p(
                "newValue",
                pick(rng, &["Sequential", "Simultaneous", "Voicemail"]),
            ),
        ],
        "CHANGE_VOICEMAIL_SETTINGS" => vec![
            p("settingName", "Voicemail to email"),
            p(
                "newValue",
                pick(rng, &["Attach as MP3", "Notify only", "Off"]),
            ),
        ],
        "CHANGE_CALLER_ID" => vec![
            p("settingName", "Outbound Caller ID"),
            p("newValue", &format!("+1415555{:04}", rng.u32(..10_000))),
        ],
        "CHANGE_EMERGENCY_ADDRESS" => vec![
            p("street", &format!("{} Market St", rng.u32(1..3000))),
            p("city", pick(rng, &["San Francisco", "Denver", "London"])),
        ],
        "CHANGE_COMPANY_INFO" => vec![
            p(
                "fieldName",
                pick(rng, &["companyName", "mainNumber", "address"]),
            ),
            p(
                "newValue",
                pick(rng, &["Updated value", "+16505550100", "20 Davis Dr"]),
            ),
        ],
        "CHANGE_BUSINESS_HOURS" => vec![
            p("oldValue", "Mon-Fri 09:00-17:00"),
            p(
                "newValue",
                pick(rng, &["Mon-Fri 08:00-18:00", "Mon-Sat 09:00-17:00"]),
            ),
        ],
        "CHANGE_COMPANY_CALL_HANDLING" | "CHANGE_IVR_MENU" => vec![
            p(
                "menuName",
                pick(rng, &["Main Menu", "After Hours Menu", "Support Menu"]),
            ),
            p(
                "settingName",
                pick(rng, &["Key 1 action", "Greeting", "Operator"]),
            ),
        ],
        "CHANGE_CALL_QUEUE_MEMBERS" => vec![
            p("queueName", &format!("{} Queue", pick(rng, DEPARTMENTS))),
            p("addedMember", &pool.users[rng.usize(..POOL_SIZE)].name),
        ],
        "ADD_PHONE_NUMBER" | "REMOVE_PHONE_NUMBER" | "ASSIGN_PHONE_NUMBER" => vec![
            p("phoneNumber", &format!("+1650555{:04}", rng.u32(..10_000))),
            p(
                "usageType",
                pick(rng, &["DirectNumber", "CompanyNumber", "MainCompanyNumber"]),
            ),
        ],
        "ADD_DEVICE" | "DELETE_DEVICE" | "CHANGE_DEVICE_SETTINGS" => vec![
            p("deviceModel", pick(rng, DEVICE_MODELS)),
            p("serial", &format!("{:012X}", rng.u64(..0xFFFF_FFFF_FFFF))),
        ],
        "CREATE_SITE" | "CHANGE_SITE_INFO" => vec![p("siteName", pick(rng, SITE_NAMES))],
        "CHANGE_USER_TEMPLATE" | "APPLY_USER_TEMPLATE" => vec![
            p("templateType", "UserSettings"),
            p("appliedTo", &rng.usize(1..25).to_string()),
        ],
        "CHANGE_MFA_SETTINGS" => vec![
            p("settingName", "Two-factor authentication"),
            p(
                "newValue",
                pick(rng, &["Required for admins", "Required for all users"]),
            ),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn catalogue_and_action_ids_agree() {
        let ids: Vec<&str> = ACTIONS.iter().map(|a| a.id).collect();
        assert_eq!(ids, ACTION_IDS);
        assert!(ACTION_IDS.len() >= 20);
        for published in PUBLISHED_ACTION_IDS {
            assert!(ACTION_IDS.contains(published), "{published}");
        }
        for needed in [
            "LOGIN_SUCCESSFULLY",
            "LOGIN_FAILED",
            "LOGIN_FAILED_WRONG_PASSWORD",
            "ACCOUNT_LOCKED",
            "USER_LOCKED_OUT",
            "CHANGE_USER_ROLE",
            "CHANGE_SECRET_INFO",
            "CHANGE_USER_INFO",
        ] {
            assert!(ACTION_IDS.contains(&needed), "{needed}");
        }
    }

    #[test]
    fn records_have_the_public_shape_and_about_one_kilobyte() {
        let from = at("2024-08-06T00:00:00Z");
        let to = at("2024-08-07T00:00:00Z");
        let records = generate_records(7, "403858014008", "Acme Corp", 2000, from, to);
        assert_eq!(records.len(), 2000);
        let total: usize = records.iter().map(|r| r.to_string().len()).sum();
        let average = total / records.len();
        assert!((700..=1400).contains(&average), "average size {average}");

        let mut non_uuid = 0;
        let mut seen_ids = std::collections::HashSet::new();
        for r in &records {
            let id = r["id"].as_str().unwrap_or_default();
            assert!(seen_ids.insert(id.to_owned()), "duplicate id {id}");
            if uuid::Uuid::parse_str(id).is_err() {
                non_uuid += 1;
            }
            let time = r["eventTime"].as_str().unwrap_or_default();
            assert_eq!(time.len(), 24, "{time}");
            assert!(time.ends_with('Z'));
            let parsed = at(time);
            assert!(parsed >= from && parsed < to);
            assert!(ACTION_IDS.contains(&r["actionId"].as_str().unwrap_or_default()));
            assert_eq!(r["accountId"], "403858014008");
            assert!(r["initiator"]["extensionId"].is_string());
            assert!(r["target"]["objectType"].is_string());
            assert!(r["details"]["parameters"].is_array());
            if r["actionId"]
                .as_str()
                .is_some_and(|a| a.starts_with("LOGIN"))
            {
                assert_eq!(r["initiator"]["extensionId"], r["target"]["objectId"]);
            }
        }
        assert!((10..=100).contains(&non_uuid), "non-uuid ids: {non_uuid}");
        let times: Vec<&str> = records
            .iter()
            .filter_map(|r| r["eventTime"].as_str())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "ascending order");
    }

    #[test]
    fn same_seed_same_records_and_users_recur() {
        let from = at("2024-08-06T00:00:00Z");
        let to = at("2024-08-06T01:00:00Z");
        let a = generate_records(42, "1", "One", 300, from, to);
        let b = generate_records(42, "1", "One", 300, from, to);
        let c = generate_records(43, "1", "One", 300, from, to);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let users: std::collections::HashSet<&str> = a
            .iter()
            .filter_map(|r| r["initiator"]["name"].as_str())
            .collect();
        assert!(users.len() <= POOL_SIZE, "{} distinct users", users.len());
    }

    #[test]
    fn role_changes_carry_old_and_new_role() {
        let mut rng = fastrand::Rng::with_seed(1);
        let pool = Pool::for_account("1");
        let r = build(
            &mut rng,
            &pool,
            "1",
            "One",
            action_by_id("CHANGE_USER_ROLE"),
            at("2024-08-06T10:50:19.442Z"),
            &Script::default(),
        );
        assert_eq!(r["eventTime"], "2024-08-06T10:50:19.442Z");
        let keys: Vec<&str> = r["details"]["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["key"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(keys[..2], ["oldRoleName", "newRoleName"]);
        let single = generate_record(&mut rng, "1", "One", at("2024-08-06T10:50:19.442Z"));
        assert_eq!(single["accountName"], "One");
    }

    #[test]
    fn lockouts_follow_failed_logins_of_the_same_user() {
        let from = at("2024-08-06T00:00:00Z");
        let to = at("2024-08-08T00:00:00Z");
        let records = generate_records(3, "1", "One", 5000, from, to);
        let lockouts: Vec<&Value> = records
            .iter()
            .filter(|r| r["actionId"] == "ACCOUNT_LOCKED" || r["actionId"] == "USER_LOCKED_OUT")
            .collect();
        assert!(!lockouts.is_empty());
        for lock in lockouts {
            let user = &lock["target"]["objectId"];
            let time = lock["eventTime"].as_str().unwrap_or_default();
            let failed_before = records.iter().any(|r| {
                r["actionId"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("LOGIN_FAILED"))
                    && &r["target"]["objectId"] == user
                    && r["eventTime"].as_str().unwrap_or_default() <= time
            });
            assert!(failed_before, "lockout without failures: {lock}");
        }
    }
}
