//! Istio's Grafana dashboards as Grafana runs them: every panel query of a vendored dashboard
//! (e2e/metrics/istio-dashboards/), its template variables resolved from Prometheus and
//! substituted with Grafana's Prometheus-datasource escaping, and `$__interval` /
//! `$__rate_interval` computed as Grafana computes them, then run as Grafana's range queries.
//! Only the parts of Grafana those three dashboards use; anything else fails loudly.

use std::collections::BTreeMap;

use serde_json::Value;

/// The scrape interval configured on the Grafana datasource (`jsonData.timeInterval`): the
/// test's Prometheus scrapes every second, and a datasource set up for it says so.
pub const SCRAPE_INTERVAL_S: u64 = 1;
/// Grafana's `maxDataPoints` defaults to the panel's width in pixels; 1,000 is a half-screen
/// panel on a 1080p display.
pub const MAX_DATA_POINTS: u64 = 1_000;

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct Target {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

impl Target {
    /// `dashboard / panel / refId`: how the test names it.
    pub fn name(&self) -> String {
        format!("{} / {} / {}", self.dashboard, self.panel, self.ref_id)
    }
}

pub struct Dashboard {
    pub title: String,
    pub json: Value,
}

impl Dashboard {
    pub fn load(path: &std::path::Path) -> Dashboard {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let json: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let title = json["title"].as_str().unwrap_or("untitled").to_string();
        Dashboard { title, json }
    }

    /// Every `expr` of every panel, rows' nested panels included, in the file's order.
    pub fn targets(&self) -> Vec<Target> {
        fn walk(d: &str, panels: &Value, out: &mut Vec<Target>) {
            for p in panels.as_array().into_iter().flatten() {
                let title = p["title"].as_str().unwrap_or("").to_string();
                for (i, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
                    if let Some(expr) = t["expr"].as_str() {
                        out.push(Target {
                            dashboard: d.to_string(),
                            panel: title.clone(),
                            ref_id: t["refId"]
                                .as_str()
                                .map_or_else(|| format!("#{i}"), str::to_string),
                            expr: expr.to_string(),
                        });
                    }
                }
                walk(d, &p["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.title, &self.json["panels"], &mut out);
        out
    }

    /// The default time range's length in seconds (`time.from` as `now-<n><unit>`).
    pub fn range_s(&self) -> u64 {
        let from = self.json["time"]["from"].as_str().unwrap_or("now-6h");
        let span = from
            .strip_prefix("now-")
            .unwrap_or_else(|| panic!("{}: time.from {from}", self.title));
        let (n, unit) = span.split_at(span.len() - 1);
        let n: u64 = n
            .parse()
            .unwrap_or_else(|_| panic!("{}: time.from {from}", self.title));
        n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => panic!("{}: time.from {from}", self.title),
        }
    }

    /// The template variables, in order (later ones may refer to earlier ones).
    pub fn variables(&self) -> Vec<Value> {
        self.json["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// What the user picked for a variable; a variable not named keeps the dashboard's default
/// (`current`), as opening the dashboard does.
#[derive(Debug, Clone)]
pub enum Pick {
    One(String),
    Many(Vec<String>),
    All,
}

/// A variable's resolved values and whether Grafana formats it as a regex (multi or All).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub values: Vec<String>,
    pub regex: bool,
}

/// Grafana's `roundInterval` (packages/grafana-data rangeutil), milliseconds.
pub fn round_interval(ms: u64) -> u64 {
    const STEPS: [(u64, u64); 21] = [
        (15, 10),
        (35, 20),
        (75, 50),
        (150, 100),
        (350, 200),
        (750, 500),
        (1_500, 1_000),
        (3_500, 2_000),
        (7_500, 5_000),
        (12_500, 10_000),
        (17_500, 15_000),
        (25_000, 20_000),
        (45_000, 30_000),
        (90_000, 60_000),
        (210_000, 120_000),
        (450_000, 300_000),
        (750_000, 600_000),
        (1_050_000, 900_000),
        (1_500_000, 1_200_000),
        (2_700_000, 1_800_000),
        (5_400_000, 3_600_000),
    ];
    STEPS
        .iter()
        .find(|(below, _)| ms < *below)
        .map_or(7_200_000, |(_, r)| *r)
}

/// `$__interval` in seconds: Grafana's `calculateInterval(range, maxDataPoints,
/// datasource scrape interval)`: the rounded range / data points, at least the scrape
/// interval. (Whole seconds here: every case the test uses is.)
pub fn interval_s(range_s: u64) -> u64 {
    let ms = round_interval(range_s * 1000 / MAX_DATA_POINTS).max(SCRAPE_INTERVAL_S * 1000);
    ms.div_ceil(1000)
}

/// `$__rate_interval`: the Prometheus datasource's `max($__interval + scrape interval,
/// 4 * scrape interval)`.
pub fn rate_interval_s(range_s: u64) -> u64 {
    (interval_s(range_s) + SCRAPE_INTERVAL_S).max(4 * SCRAPE_INTERVAL_S)
}

/// Grafana's `prometheusRegularEscape`: a single value (neither multi nor All).
fn regular_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\'', "\\\\'")
}

/// Grafana's `prometheusSpecialRegexEscape`: a value inside a regex (multi or All).
fn regex_escape(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\\\\\"),
            '$' | '^' | '*' | '{' | '}' | '[' | ']' | '\'' | '+' | '?' | '.' | '(' | ')' | '|' => {
                out.push_str("\\\\");
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// How Grafana's Prometheus datasource writes a variable into a query
/// (`interpolateQueryExpr`).
fn format(r: &Resolved) -> String {
    if !r.regex {
        return r
            .values
            .first()
            .map(|v| regular_escape(v))
            .unwrap_or_default();
    }
    let escaped: Vec<String> = r.values.iter().map(|v| regex_escape(v)).collect();
    match escaped.as_slice() {
        [one] => one.clone(),
        many => format!("({})", many.join("|")),
    }
}

/// Replaces `$name` and `${name}` (Grafana's `\$(\w+)` and `${name}` forms) with `vars`;
/// an unknown name fails the test (the dashboard uses something this emulation lacks).
pub fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, used) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .unwrap_or_else(|| panic!("unclosed ${{ in {text}"));
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
        } else {
            let value = vars
                .get(name)
                .unwrap_or_else(|| panic!("variable ${name} unknown to the test: {text}"));
            out.push_str(value);
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// Grafana's `query_result()` rows as text: `name{k="v",...} value timestamp_ms`.
pub fn query_result_text(result: &[Value]) -> Vec<String> {
    result
        .iter()
        .map(|r| {
            let mut metric = r["metric"].as_object().cloned().unwrap_or_default();
            let name = metric
                .remove("__name__")
                .and_then(|n| n.as_str().map(str::to_string))
                .unwrap_or_default();
            let labels: Vec<String> = metric
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
                .collect();
            let ts = r["value"][0].as_f64().unwrap_or(0.0) * 1000.0;
            let value = r["value"][1].as_str().unwrap_or("");
            format!("{name}{{{}}} {value} {ts}", labels.join(","))
        })
        .collect()
}

/// A variable's `regex` applied to one row. The three dashboards use one shape,
/// `/.*LIT="([^"]*).*/` (the greedy `.*` takes the last `LIT="`); another shape fails.
pub fn extract(regex: &str, row: &str) -> Option<String> {
    let inner = regex
        .strip_prefix("/.*")
        .and_then(|r| r.strip_suffix("\"([^\"]*).*/"))
        .unwrap_or_else(|| panic!("variable regex {regex} is not /.*LIT=\"([^\"]*).*/"));
    let lit = format!("{inner}\"");
    let at = row.rfind(&lit)?;
    let value = &row[at + lit.len()..];
    Some(value[..value.find('"')?].to_string())
}

/// Resolves every template variable of `d` as Grafana does on opening it with `picks`: a
/// `query` variable runs its (interpolated) `query_result` through `instant` and takes its
/// regex's captures as its options; `custom` splits its query on commas. A pick must be one
/// of the options (the dashboard offers it). Built-ins are added for the dashboard's range.
pub fn resolve(
    d: &Dashboard,
    picks: &BTreeMap<&str, Pick>,
    instant: &dyn Fn(&str) -> Vec<Value>,
) -> BTreeMap<String, String> {
    let range = d.range_s();
    let mut vars = BTreeMap::new();
    vars.insert("__interval".to_string(), format!("{}s", interval_s(range)));
    vars.insert(
        "__interval_ms".to_string(),
        (interval_s(range) * 1000).to_string(),
    );
    vars.insert(
        "__rate_interval".to_string(),
        format!("{}s", rate_interval_s(range)),
    );
    vars.insert("__range".to_string(), format!("{range}s"));
    vars.insert("__range_s".to_string(), range.to_string());
    for v in d.variables() {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let options: Vec<String> = match v["type"].as_str() {
            Some("datasource") => continue,
            Some("custom") => v["query"]
                .as_str()
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            Some("query") => {
                let q = interpolate(v["query"].as_str().unwrap_or_default(), &vars);
                let inner = q
                    .trim()
                    .strip_prefix("query_result(")
                    .and_then(|q| q.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("${name}: not a query_result(): {q}"));
                let regex = v["regex"].as_str().unwrap_or_default();
                let mut opts: Vec<String> = Vec::new();
                for row in query_result_text(&instant(inner)) {
                    if let Some(value) = extract(regex, &row)
                        && !opts.contains(&value)
                    {
                        opts.push(value);
                    }
                }
                opts
            }
            other => panic!("${name}: variable type {other:?} not emulated"),
        };
        let multi = v["multi"].as_bool().unwrap_or(false);
        let include_all = v["includeAll"].as_bool().unwrap_or(false);
        let default = || {
            let current = &v["current"]["value"];
            match current {
                Value::String(s) if s == "$__all" => Pick::All,
                Value::String(s) => Pick::One(s.clone()),
                Value::Array(a) => Pick::Many(
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                ),
                _ => panic!("${name} has no default and the test picked none"),
            }
        };
        let pick = picks.get(name.as_str()).cloned().unwrap_or_else(default);
        let values = match pick {
            Pick::All => {
                assert!(include_all, "${name} has no All option");
                assert!(
                    v["allValue"].is_null(),
                    "${name}: a custom allValue is not emulated"
                );
                options.clone()
            }
            Pick::One(s) => vec![s],
            Pick::Many(m) => {
                assert!(multi, "${name} is not multi-value");
                m
            }
        };
        for value in &values {
            assert!(
                options.contains(value),
                "${name} of {} does not offer {value}: options {options:?}",
                d.title
            );
        }
        let resolved = Resolved {
            values,
            regex: multi || include_all,
        };
        vars.insert(name, format(&resolved));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_follow_grafana() {
        // 15 min over 1,000 points: 900 ms rounds to 1 s; 30 min: 1.8 s rounds to 2 s.
        assert_eq!(interval_s(900), 1);
        assert_eq!(interval_s(1800), 2);
        assert_eq!(rate_interval_s(900), 4);
        assert_eq!(rate_interval_s(1800), 4);
        assert_eq!(round_interval(300), 200);
    }

    #[test]
    fn variables_are_escaped_as_grafana_escapes_them() {
        let many = Resolved {
            values: vec!["a.b".into(), "c".into()],
            regex: true,
        };
        assert_eq!(format(&many), r"(a\\.b|c)");
        let one = Resolved {
            values: vec!["a.b".into()],
            regex: false,
        };
        assert_eq!(format(&one), "a.b");
        let vars = BTreeMap::from([
            ("service".to_string(), "x".to_string()),
            ("__rate_interval".to_string(), "4s".to_string()),
        ]);
        assert_eq!(
            interpolate(r#"f{s="$service"}[$__rate_interval] ${service}"#, &vars),
            r#"f{s="x"}[4s] x"#
        );
        assert_eq!(
            extract(
                r#"/.*destination_service="([^"]*).*/"#,
                r#"{destination_service="a.b"} 1 2"#
            ),
            Some("a.b".to_string())
        );
    }
}
