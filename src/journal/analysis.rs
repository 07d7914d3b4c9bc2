//! What levee concludes from an incident: the root cause as it observed it, what it did, and
//! the corrective measures that follow. Every sentence is built from counted figures only.

use super::report::Report;
use super::store::EventRow;

/// `1234567` → `"1,234,567"`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

/// Fills `root_cause`, `resolution` and `measures`.
pub fn conclude(r: &mut Report, events: &[EventRow]) {
    let i = r.impact.clone();
    let sh = r.shield.clone();
    let mut cause = Vec::new();
    if sh.attack_start_ms.is_some() {
        let mut c = format!(
            "A flood from {} sources: up to {:.0} requests/s against a baseline of {:.0}/s.",
            thousands(sh.sources),
            sh.peak_rps,
            sh.baseline_rps
        );
        if let Some((net, n)) = sh.top_subnets.first() {
            // The shield counts over its own detection window: a share of the incident's
            // requests is stated only when it can be true.
            if *n <= i.requests_total {
                c.push_str(&format!(
                    " The top subnet {net} sent {} requests as counted by the shield ({:.0}% of the {} requests levee received during the incident).",
                    thousands(*n),
                    pct(*n, i.requests_total),
                    thousands(i.requests_total)
                ));
            } else {
                c.push_str(&format!(
                    " The top subnet {net} sent {} requests as counted by the shield's detector.",
                    thousands(*n)
                ));
            }
        }
        cause.push(c);
    }
    let down: Vec<&EventRow> = events
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "server_down" | "server_ejected"))
        .collect();
    if !down.is_empty() {
        let mut names: Vec<String> = down
            .iter()
            .filter_map(|e| Some(format!("{}/{}", e.pool.as_deref()?, e.server.as_deref()?)))
            .collect();
        names.sort();
        names.dedup();
        cause.push(format!(
            "{} server{} went down or were ejected: {}.",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        ));
    }
    if i.failed > 0 {
        cause.push(format!(
            "{} requests failed ({} 5xx from servers, {} failed upstream connections or timeouts).",
            thousands(i.failed),
            thousands(i.server_5xx),
            thousands(i.upstream_errors)
        ));
    }
    if i.shed > 0 {
        cause.push(format!(
            "Pools were saturated: {} requests were shed (503 with Retry-After).",
            thousands(i.shed)
        ));
    }
    if cause.is_empty() {
        let first = r.alerts.first().map_or_else(
            || r.title.clone(),
            |a| format!("alert {} fired: {}", a.name, a.summary),
        );
        cause.push(format!(
            "levee saw no failed, shed or blocked request; the {first}."
        ));
    }
    r.root_cause = cause.join(" ");

    let mut res = Vec::new();
    if sh.bans_automatic + sh.bans_manual > 0 {
        let within = sh
            .bans_within_ms
            .map(|ms| {
                format!(
                    " within {:.0} s of the attack's start",
                    (ms as f64 / 1000.0).ceil()
                )
            })
            .unwrap_or_default();
        res.push(format!(
            "{} sources banned automatically{within}, {} manually ({} distinct clients or ranges).",
            thousands(sh.bans_automatic),
            thousands(sh.bans_manual),
            thousands(sh.banned)
        ));
    }
    if i.blocked > 0 {
        res.push(format!(
            "{} requests were blocked by levee before reaching a server.",
            thousands(i.blocked)
        ));
    }
    if i.shed > 0 {
        res.push(format!(
            "{} requests were shed at once instead of queueing on overloaded servers.",
            thousands(i.shed)
        ));
    }
    if i.max_server_load <= 1.0 {
        res.push(format!(
            "Backends stayed within their caps (highest in-flight: {:.0}% of a server's max_concurrency).",
            i.max_server_load * 100.0
        ));
    }
    if r.open {
        res.push("The incident is still open.".into());
    } else {
        res.push("Every alert resolved; the incident closed after the quiet period.".into());
    }
    r.resolution = res;

    let mut m = Vec::new();
    let attack_total: u64 = sh.top_subnets.iter().map(|x| x.1).sum();
    for (net, n) in &sh.top_subnets {
        // A range worth a permanent deny: a fifth or more of what the shield counted.
        if pct(*n, attack_total.max(i.requests_total.min(attack_total))) >= 20.0 {
            m.push(format!(
                "Consider a permanent deny for {net} (`[shield] deny`) if no legitimate user comes from it: the shield counted {} requests from it.",
                thousands(*n)
            ));
        }
    }
    if i.shed > 0 {
        m.push(format!(
            "Capacity: {} requests were shed. Add servers to the affected pools ({}), or raise max_concurrency only where a load test shows the servers take it.",
            thousands(i.shed),
            if r.pools.is_empty() { "see the timeline".into() } else { r.pools.join(", ") }
        ));
    }
    if !down.is_empty() {
        m.push("Find out why the servers went down (their logs at the times in the timeline) and fix it before the next peak.".into());
    }
    let first_symptom = r
        .series
        .iter()
        .find(|s| s[2] + s[3] > 0)
        .map(|s| s[0] * 1000);
    for a in &r.alerts {
        if let Some(t) = first_symptom {
            let late = (a.fired_ms - t) / 1000;
            if late > 60 {
                m.push(format!(
                    "Alert {} fired {late} s after the first failed or shed requests: consider a shorter `for` in its `[[alerts]]` override.",
                    a.name
                ));
            }
        }
    }
    if i.failed > 0
        && !r
            .alerts
            .iter()
            .any(|a| a.name == "error_ratio" || a.name == "slo_availability")
    {
        m.push("Requests failed but no error alert fired: review the error_ratio threshold and min_requests.".into());
    }
    m.push("Replay this incident's traffic against a staging pool with `levee loadtest` before the next release.".into());
    r.measures = m;
}
