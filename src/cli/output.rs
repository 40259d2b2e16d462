//! How list commands print: a kubectl-style table (uppercase headers, columns padded with three
//! spaces, the last one unpadded) or the same rows as JSON or YAML (`-o json|yaml`), so scripts
//! get every field the table abbreviates.

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::error::CliError;
use super::inventory::MeshArgs;

/// `-o`: how a list command prints its rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Yaml,
}

/// What every list command takes: `-o` and where weft lives.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value_t,
        env = "WEFT_OUTPUT"
    )]
    pub output: OutputFormat,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// A row of a list command: serialisable for `-o json|yaml`, cells for the table.
pub trait Row: Serialize {
    const HEADERS: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

/// The rows in the asked format, ending with a newline; `None` for an empty table, so the
/// caller can say on stderr that there is nothing (as kubectl's "No resources found").
pub fn render<R: Row>(rows: &[R], format: OutputFormat) -> Result<Option<String>, CliError> {
    match format {
        OutputFormat::Table if rows.is_empty() => Ok(None),
        OutputFormat::Table => {
            let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
            Ok(Some(table(R::HEADERS, &cells)))
        }
        OutputFormat::Json => serde_json::to_string_pretty(rows)
            .map(|s| Some(s + "\n"))
            .map_err(|e| CliError::Output {
                format: "json",
                message: e.to_string(),
            }),
        OutputFormat::Yaml => serde_yaml::to_string(rows)
            .map(Some)
            .map_err(|e| CliError::Output {
                format: "yaml",
                message: e.to_string(),
            }),
    }
}

/// A table as kubectl prints it. Widths count characters, not bytes.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().take(columns).enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(width - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A list in a table cell: `<none>` when empty, else the first few names and a count of the
/// rest, so one busy revision does not push the other columns off the screen.
pub fn list_cell(items: &[String]) -> String {
    const SHOWN: usize = 3;
    match items.len() {
        0 => "<none>".to_string(),
        n if n <= SHOWN => items.join(","),
        n => format!("{} +{} more", items[..SHOWN].join(","), n - SHOWN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Pair {
        name: String,
        count: u32,
    }

    impl Row for Pair {
        const HEADERS: &'static [&'static str] = &["name", "count"];
        fn cells(&self) -> Vec<String> {
            vec![self.name.clone(), self.count.to_string()]
        }
    }

    fn pairs() -> Vec<Pair> {
        vec![
            Pair {
                name: "pets".into(),
                count: 3,
            },
            Pair {
                name: "payments-ä".into(),
                count: 12,
            },
        ]
    }

    #[test]
    fn table_pads_columns_like_kubectl() {
        let out = render(&pairs(), OutputFormat::Table).unwrap().unwrap();
        assert_eq!(
            out,
            "NAME         COUNT\n\
             pets         3\n\
             payments-ä   12\n"
        );
    }

    #[test]
    fn empty_table_is_none_but_empty_json_is_an_empty_list() {
        let none: Vec<Pair> = Vec::new();
        assert_eq!(render(&none, OutputFormat::Table).unwrap(), None);
        assert_eq!(
            render(&none, OutputFormat::Json).unwrap().as_deref(),
            Some("[]\n")
        );
    }

    #[test]
    fn json_and_yaml_carry_the_rows() {
        let json = render(&pairs(), OutputFormat::Json).unwrap().unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed[1]["count"], 12);
        let yaml = render(&pairs(), OutputFormat::Yaml).unwrap().unwrap();
        assert!(yaml.starts_with("- name: pets\n  count: 3\n"), "{yaml}");
    }

    #[test]
    fn long_lists_are_abbreviated_in_cells() {
        let names = |n: usize| (0..n).map(|i| format!("ns{i}")).collect::<Vec<_>>();
        assert_eq!(list_cell(&names(0)), "<none>");
        assert_eq!(list_cell(&names(3)), "ns0,ns1,ns2");
        assert_eq!(list_cell(&names(5)), "ns0,ns1,ns2 +2 more");
    }
}
