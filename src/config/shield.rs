//! `[shield]`: the built-in intrusion detection and prevention system's settings, raw and
//! validated. Every default is generous enough for real browsers and strict enough that a
//! single source cannot take a site down.

use super::units::{Dur, Size};
use super::{Problem, line_col};
use ipnet::IpNet;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// `[shield]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShield {
    /// Default `true`. Off, levee still caps servers, but no source is limited or banned.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `"enforce"` (default) blocks; `"detect"` computes, logs and counts what would have been
    /// blocked, and blocks nothing.
    #[serde(default = "default_mode")]
    pub mode: Spanned<String>,
    /// Rules that run as in detect mode on their own: any of `connections`, `rate_limit`,
    /// `concurrency`, `slow_body`, `slow_read`, `idle_cap`, `bans`. Default none.
    #[serde(default)]
    pub dry_run: Vec<Spanned<String>>,
    /// IPv6 clients are grouped by this prefix length. Default `64`: one home or host usually
    /// owns a whole /64, so per-address limits would be trivial to dodge.
    #[serde(default = "default_v6_prefix")]
    pub ipv6_prefix: u8,
    /// Open connections per client. Default `64`: browsers open 6 per host.
    #[serde(default = "default_64")]
    pub max_connections_per_client: u32,
    /// Requests in progress at once per client. Default `64`.
    #[serde(default = "default_64")]
    pub max_requests_per_client: u32,
    /// Requests per second per client (sustained). Default `50`.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Requests a client may send at once above the rate. Default `100`: a page load with
    /// all its assets fits.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Idle keep-alive connections per client; more are closed. Default `16`.
    #[serde(default = "default_16")]
    pub max_idle_per_client: u32,
    /// Slowest accepted request body, per second, after `body_rate_grace`. Default `1KiB`
    /// (a slow-POST attacker sends a byte every few seconds).
    #[serde(default = "default_min_body_rate")]
    pub min_body_rate: Size,
    /// Time a body may take before `min_body_rate` applies. Default `5s`.
    #[serde(default = "default_body_grace")]
    pub body_rate_grace: Dur,
    /// A response write that makes no progress for this long means the client is not
    /// reading (slow-read attack): the connection is closed. Default `30s`.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: Dur,
    /// Clients whose state is tracked at once. Default `1000000` (levee measured at 165 MB RSS in
    /// all with that many, `bench/shield_memory.sh`).
    #[serde(default = "default_tracked")]
    pub max_tracked_clients: u64,
    /// Never limited nor banned (CIDRs or addresses). Default none.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Always refused at accept. Default none.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// Files with one CIDR or address per line (`#` comments), read at load and reload.
    #[serde(default)]
    pub allow_file: Option<Spanned<String>>,
    #[serde(default)]
    pub deny_file: Option<Spanned<String>>,
    /// Automatic bans.
    #[serde(default)]
    pub bans: RawBans,
    /// Attack detection (IDS).
    #[serde(default)]
    pub attack: RawAttack,
    /// Per-route rate limits, e.g. `/login` at 5/s (at most 2).
    #[serde(default)]
    pub routes: Vec<RawRouteLimit>,
}

/// `[shield.bans]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBans {
    /// Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A client whose violation score passes this is banned. Default `20`.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// First ban. Default `10m`; each repeat doubles it up to `max`.
    #[serde(default = "default_ban_duration")]
    pub duration: Dur,
    /// Longest ban. Default `24h`.
    #[serde(default = "default_ban_max")]
    pub max: Dur,
    /// Scores halve over this time, so occasional slips never add up. Default `60s`.
    #[serde(default = "default_half_life")]
    pub score_half_life: Dur,
    /// Bans held at once; past it, bans are merged into /24 (IPv4) or /48 (IPv6) ranges.
    /// Default `100000`.
    #[serde(default = "default_max_bans")]
    pub max_bans: u64,
    /// Score per request over the rate limit. Default `1`.
    #[serde(default = "one_f")]
    pub weight_rate_limited: f64,
    /// Score per connection over the connection limit. Default `1`.
    #[serde(default = "one_f")]
    pub weight_connections: f64,
    /// Score per malformed request. Default `5`.
    #[serde(default = "five_f")]
    pub weight_malformed: f64,
    /// Score per slow-client timeout (header, body, read). Default `5`.
    #[serde(default = "five_f")]
    pub weight_slow_client: f64,
    /// Score per 4xx answer from a server (a path scan is a burst of 404s). Default `1`.
    #[serde(default = "one_f")]
    pub weight_client_error: f64,
}

/// `[shield.attack]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAttack {
    /// Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// An attack is suspected above this multiple of the baseline request rate. Default `3`.
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// ...and above this many requests per second, so a quiet site's spike is no attack.
    /// Default `100`.
    #[serde(default = "default_floor")]
    pub floor_rps: f64,
    /// ...for this long. Default `3s`.
    #[serde(default = "default_for")]
    pub r#for: Dur,
    /// The attack ends after this long back under the threshold. Default `10s`.
    #[serde(default = "default_cooldown")]
    pub cooldown: Dur,
    /// Time constant of the moving baseline. Default `5m`.
    #[serde(default = "default_baseline")]
    pub baseline_window: Dur,
    /// While an attack is on, per-client rate limits are multiplied by this. Default `0.5`;
    /// `1` turns the under-attack policy off.
    #[serde(default = "default_under_attack")]
    pub under_attack_rate_factor: f64,
}

/// `[[shield.routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteLimit {
    /// Paths starting with this prefix.
    pub path_prefix: Spanned<String>,
    /// Requests per second per client.
    pub rate: f64,
    /// Burst. Default `rate` (at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

fn yes() -> bool {
    true
}
fn one_f() -> f64 {
    1.0
}
fn five_f() -> f64 {
    5.0
}
fn default_mode() -> Spanned<String> {
    Spanned::new(0..0, "enforce".into())
}
fn default_v6_prefix() -> u8 {
    64
}
fn default_64() -> u32 {
    64
}
fn default_16() -> u32 {
    16
}
fn default_rate() -> f64 {
    50.0
}
fn default_burst() -> u32 {
    100
}
fn default_min_body_rate() -> Size {
    Size(1024)
}
fn default_body_grace() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_send_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_tracked() -> u64 {
    1_000_000
}
fn default_threshold() -> f64 {
    20.0
}
fn default_ban_duration() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_ban_max() -> Dur {
    Dur(Duration::from_secs(86_400))
}
fn default_half_life() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_max_bans() -> u64 {
    100_000
}
fn default_factor() -> f64 {
    3.0
}
fn default_floor() -> f64 {
    100.0
}
fn default_for() -> Dur {
    Dur(Duration::from_secs(3))
}
fn default_cooldown() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_baseline() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_under_attack() -> f64 {
    0.5
}

impl Default for RawShield {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|e| unreachable!("shield defaults parse: {e}"))
    }
}
impl Default for RawBans {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|e| unreachable!("ban defaults parse: {e}"))
    }
}
impl Default for RawAttack {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|e| unreachable!("attack defaults parse: {e}"))
    }
}

/// The shield's rules, for `dry_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Connections,
    RateLimit,
    Concurrency,
    SlowBody,
    SlowRead,
    IdleCap,
    Bans,
}

impl Rule {
    pub const ALL: [Rule; 7] = [
        Rule::Connections,
        Rule::RateLimit,
        Rule::Concurrency,
        Rule::SlowBody,
        Rule::SlowRead,
        Rule::IdleCap,
        Rule::Bans,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Connections => "connections",
            Rule::RateLimit => "rate_limit",
            Rule::Concurrency => "concurrency",
            Rule::SlowBody => "slow_body",
            Rule::SlowRead => "slow_read",
            Rule::IdleCap => "idle_cap",
            Rule::Bans => "bans",
        }
    }
    fn bit(self) -> u8 {
        1 << (Rule::ALL.iter().position(|r| *r == self).unwrap_or(0) as u8)
    }
}

/// A per-route rate limit.
#[derive(Debug, Clone)]
pub struct RouteLimit {
    pub path_prefix: String,
    pub rate: f64,
    pub burst: u32,
}

/// `[shield]`, validated.
#[derive(Debug, Clone)]
pub struct Shield {
    pub enabled: bool,
    /// `true` in detect mode: nothing is blocked.
    pub detect_only: bool,
    dry_run_bits: u8,
    pub ipv6_prefix: u8,
    pub max_connections_per_client: u32,
    pub max_requests_per_client: u32,
    pub rate: f64,
    pub burst: u32,
    pub max_idle_per_client: u32,
    pub min_body_rate: u64,
    pub body_rate_grace: Duration,
    pub send_timeout: Duration,
    pub max_tracked_clients: usize,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub bans_enabled: bool,
    pub ban_threshold: f64,
    pub ban_duration: Duration,
    pub ban_max: Duration,
    pub score_half_life: Duration,
    pub max_bans: usize,
    pub weight_rate_limited: f64,
    pub weight_connections: f64,
    pub weight_malformed: f64,
    pub weight_slow_client: f64,
    pub weight_client_error: f64,
    pub attack_enabled: bool,
    pub attack_factor: f64,
    pub attack_floor_rps: f64,
    pub attack_for: Duration,
    pub attack_cooldown: Duration,
    pub baseline_window: Duration,
    pub under_attack_rate_factor: f64,
    pub routes: Vec<RouteLimit>,
}

impl Shield {
    /// True when this rule only observes (detect mode or the rule's own dry run).
    pub fn dry(&self, r: Rule) -> bool {
        self.detect_only || self.dry_run_bits & r.bit() != 0
    }
}

impl Default for Shield {
    fn default() -> Self {
        match validate(&RawShield::default(), "", None) {
            Ok(s) => s,
            Err(p) => unreachable!("shield defaults validate: {p:?}"),
        }
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn read_list(
    path: &Path,
    key: &str,
    at: Option<(usize, usize)>,
    out: &mut Vec<IpNet>,
    problems: &mut Vec<Problem>,
) {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            for (i, line) in text.lines().enumerate() {
                let l = line.split('#').next().unwrap_or("").trim();
                if l.is_empty() {
                    continue;
                }
                match parse_net(l) {
                    Some(n) => out.push(n),
                    None => problems.push(Problem {
                        line_col: at,
                        key: key.into(),
                        message: format!(
                            "{}:{}: {l:?} is not a CIDR or an IP address",
                            path.display(),
                            i + 1
                        ),
                    }),
                }
            }
        }
        Err(e) => problems.push(Problem {
            line_col: at,
            key: key.into(),
            message: format!("cannot read {}: {e}", path.display()),
        }),
    }
}

type Reporter<'a> = dyn FnMut(Option<(usize, usize)>, &str, String) + 'a;

/// Validates `[shield]`; problems carry their locations.
pub fn validate(r: &RawShield, text: &str, base: Option<&Path>) -> Result<Shield, Vec<Problem>> {
    let mut problems = Vec::new();
    let loc = |span: std::ops::Range<usize>| (span.end > 0).then(|| line_col(text, span.start));
    let mut bad = |at: Option<(usize, usize)>, key: &str, msg: String| {
        problems.push(Problem {
            line_col: at,
            key: key.into(),
            message: msg,
        })
    };
    let detect_only = match r.mode.get_ref().as_str() {
        "enforce" => false,
        "detect" => true,
        other => {
            bad(
                loc(r.mode.span()),
                "shield.mode",
                format!("{other:?} is not a mode: use \"enforce\" or \"detect\""),
            );
            false
        }
    };
    let mut dry_run_bits = 0u8;
    for (i, d) in r.dry_run.iter().enumerate() {
        match Rule::ALL.iter().find(|x| x.as_str() == d.get_ref()) {
            Some(rule) => dry_run_bits |= rule.bit(),
            None => bad(
                loc(d.span()),
                &format!("shield.dry_run[{i}]"),
                format!(
                    "{:?} is not a rule: use one of {}",
                    d.get_ref(),
                    Rule::ALL.map(Rule::as_str).join(", ")
                ),
            ),
        }
    }
    let nets = |list: &[Spanned<String>], key: &str, bad: &mut Reporter| {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match parse_net(s.get_ref()) {
                Some(n) => out.push(n),
                None => bad(
                    loc(s.span()),
                    &format!("{key}[{i}]"),
                    format!(
                        "{:?} is not a CIDR such as \"203.0.113.0/24\" or an IP address",
                        s.get_ref()
                    ),
                ),
            }
        }
        out
    };
    let mut allow = nets(&r.allow, "shield.allow", &mut bad);
    let mut deny = nets(&r.deny, "shield.deny", &mut bad);
    if !(1..=128).contains(&r.ipv6_prefix) {
        bad(
            None,
            "shield.ipv6_prefix",
            "must be between 1 and 128 (64 is usual)".into(),
        );
    }
    if !(r.rate > 0.0 && r.rate.is_finite()) {
        bad(
            None,
            "shield.rate",
            "must be a positive number of requests per second".into(),
        );
    }
    if r.burst == 0 {
        bad(None, "shield.burst", "must be at least 1".into());
    }
    for (key, v) in [
        (
            "shield.max_connections_per_client",
            r.max_connections_per_client,
        ),
        ("shield.max_requests_per_client", r.max_requests_per_client),
        ("shield.max_idle_per_client", r.max_idle_per_client),
    ] {
        if v == 0 {
            bad(None, key, "must be at least 1".into());
        }
    }
    if r.max_tracked_clients < 1024 {
        bad(
            None,
            "shield.max_tracked_clients",
            "must be at least 1024".into(),
        );
    }
    if r.send_timeout.0.is_zero() || r.body_rate_grace.0.is_zero() {
        bad(
            None,
            "shield",
            "send_timeout and body_rate_grace must be above zero".into(),
        );
    }
    let b = &r.bans;
    if b.threshold.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        bad(None, "shield.bans.threshold", "must be above zero".into());
    }
    if b.duration.0.is_zero() || b.score_half_life.0.is_zero() {
        bad(
            None,
            "shield.bans",
            "duration and score_half_life must be above zero".into(),
        );
    }
    if b.max_bans < 16 {
        bad(None, "shield.bans.max_bans", "must be at least 16".into());
    }
    let a = &r.attack;
    if a.factor.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
        bad(
            None,
            "shield.attack.factor",
            "must be above 1 (3 means three times the baseline)".into(),
        );
    }
    if !(0.0..=1.0).contains(&a.under_attack_rate_factor) || a.under_attack_rate_factor == 0.0 {
        bad(
            None,
            "shield.attack.under_attack_rate_factor",
            "must be above 0 and at most 1".into(),
        );
    }
    if r.routes.len() > 2 {
        bad(
            None,
            "shield.routes",
            format!(
                "{} per-route limits: at most 2 are supported (each tracked client keeps state for each)",
                r.routes.len()
            ),
        );
    }
    let mut routes = Vec::new();
    for (i, rl) in r.routes.iter().enumerate() {
        if !rl.path_prefix.get_ref().starts_with('/') {
            bad(
                loc(rl.path_prefix.span()),
                &format!("shield.routes[{i}].path_prefix"),
                "must start with '/'".into(),
            );
        }
        if !(rl.rate > 0.0 && rl.rate.is_finite()) {
            bad(
                loc(rl.path_prefix.span()),
                &format!("shield.routes[{i}].rate"),
                "must be a positive number of requests per second".into(),
            );
        }
        routes.push(RouteLimit {
            path_prefix: rl.path_prefix.get_ref().clone(),
            rate: rl.rate,
            burst: rl.burst.unwrap_or(rl.rate.ceil().max(1.0) as u32).max(1),
        });
    }
    // Longest prefix first.
    routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
    let resolve = |p: &str| match base {
        Some(b) if Path::new(p).is_relative() => b.join(p),
        _ => Path::new(p).to_path_buf(),
    };
    if let Some(f) = &r.allow_file {
        read_list(
            &resolve(f.get_ref()),
            "shield.allow_file",
            loc(f.span()),
            &mut allow,
            &mut problems,
        );
    }
    if let Some(f) = &r.deny_file {
        read_list(
            &resolve(f.get_ref()),
            "shield.deny_file",
            loc(f.span()),
            &mut deny,
            &mut problems,
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Shield {
        enabled: r.enabled,
        detect_only,
        dry_run_bits,
        ipv6_prefix: r.ipv6_prefix,
        max_connections_per_client: r.max_connections_per_client,
        max_requests_per_client: r.max_requests_per_client,
        rate: r.rate,
        burst: r.burst,
        max_idle_per_client: r.max_idle_per_client,
        min_body_rate: r.min_body_rate.0,
        body_rate_grace: r.body_rate_grace.0,
        send_timeout: r.send_timeout.0,
        max_tracked_clients: usize::try_from(r.max_tracked_clients).unwrap_or(usize::MAX),
        allow,
        deny,
        bans_enabled: b.enabled,
        ban_threshold: b.threshold,
        ban_duration: b.duration.0,
        ban_max: b.max.0.max(b.duration.0),
        score_half_life: b.score_half_life.0,
        max_bans: usize::try_from(b.max_bans).unwrap_or(usize::MAX),
        weight_rate_limited: b.weight_rate_limited,
        weight_connections: b.weight_connections,
        weight_malformed: b.weight_malformed,
        weight_slow_client: b.weight_slow_client,
        weight_client_error: b.weight_client_error,
        attack_enabled: a.enabled,
        attack_factor: a.factor,
        attack_floor_rps: a.floor_rps,
        attack_for: a.r#for.0,
        attack_cooldown: a.cooldown.0,
        baseline_window: a.baseline_window.0,
        under_attack_rate_factor: a.under_attack_rate_factor,
        routes,
    })
}
