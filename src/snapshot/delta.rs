//! Incremental snapshots on the config stream (issue 19): a proxy's next snapshot as splices of the one it runs.
//!
//! A delta line (`{"delta": …}`, [`DeltaLine`]) carries the new snapshot with its three big
//! lists — `outbound.services`, `outbound.headless` and `peers` — left out of it and sent as
//! [`Piece`]s instead: runs of the base snapshot's list (`{"keep":{"from":i,"len":n}}`) and new
//! elements (`{"add":[…]}`). Everything else travels whole inside `snapshot` (it is small), so a
//! field added to the schema later reaches the proxy in a delta as in a whole line. The wire
//! rules are in [`super::stream`]; [`diff`] is the operator's side, [`splice`] and
//! [`Delta::rebuild`] the proxy's.

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use super::{KnownPeer, ProxySnapshot, Service};

/// How a delta line starts: the operator writes compact JSON with `delta` as the only key, so
/// the proxy tells a delta from a whole snapshot (which starts with `{"schemaVersion"`) by its
/// first bytes, without parsing the line twice.
pub const DELTA_PREFIX: &[u8] = b"{\"delta\":";

/// One piece of a list rebuilt from a base list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Piece<T> {
    /// `len` elements of the base list from index `from`, in order.
    Keep { from: usize, len: usize },
    /// Elements the base list does not have (or has only once, kept elsewhere).
    Add(Vec<T>),
}

/// Why a list could not be rebuilt: the delta does not fit the base it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    #[error("keep {from}+{len} is outside the base list of {base} elements")]
    OutOfRange {
        from: usize,
        len: usize,
        base: usize,
    },
    #[error(
        "keep {from}+{len} overlaps another keep: each element of the base list is kept at most once"
    )]
    Overlap { from: usize, len: usize },
}

/// The list `pieces` describe over `base`. Bounded by its input: every keep must lie inside
/// `base` and no two keeps may overlap, so the result has at most `base.len()` elements plus
/// the added ones (which the line carried), whatever the pieces say.
pub fn splice<T: Clone>(base: &[T], pieces: Vec<Piece<T>>) -> Result<Vec<T>, SpliceError> {
    let mut keeps: Vec<(usize, usize)> = Vec::new();
    let mut total = 0usize;
    for piece in &pieces {
        match piece {
            Piece::Keep { from, len } => {
                let (from, len) = (*from, *len);
                let end = from
                    .checked_add(len)
                    .filter(|&end| end <= base.len())
                    .ok_or(SpliceError::OutOfRange {
                        from,
                        len,
                        base: base.len(),
                    })?;
                if len > 0 {
                    keeps.push((from, end));
                }
                total += len;
            }
            Piece::Add(items) => total += items.len(),
        }
    }
    keeps.sort_unstable();
    if let Some(w) = keeps.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(SpliceError::Overlap {
            from: w[1].0,
            len: w[1].1 - w[1].0,
        });
    }
    // Non-overlapping keeps inside `base`: `total` <= base.len() + added elements.
    let mut out = Vec::with_capacity(total);
    for piece in pieces {
        match piece {
            Piece::Keep { from, len } => out.extend_from_slice(&base[from..from + len]),
            Piece::Add(items) => out.extend(items),
        }
    }
    Ok(out)
}

/// Pieces that rebuild `new` from `base`, given one hash per element (equal hashes: equal
/// elements): runs of base elements where they appear in `new`, each base element kept at
/// most once, the rest added (as indexes into `new`). O(n) in the two lengths.
pub fn diff<H: Hash + Eq>(base: &[H], new: &[H]) -> Vec<Piece<usize>> {
    let mut at: HashMap<&H, usize> = HashMap::with_capacity(base.len());
    for (i, h) in base.iter().enumerate() {
        at.entry(h).or_insert(i);
    }
    let mut used = vec![false; base.len()];
    let mut pieces: Vec<Piece<usize>> = Vec::new();
    for (i, h) in new.iter().enumerate() {
        let kept = at.get(h).copied().filter(|&j| !used[j]);
        match (kept, pieces.last_mut()) {
            (Some(j), Some(Piece::Keep { from, len })) if *from + *len == j => *len += 1,
            (Some(j), _) => pieces.push(Piece::Keep { from: j, len: 1 }),
            (None, Some(Piece::Add(items))) => items.push(i),
            (None, _) => pieces.push(Piece::Add(vec![i])),
        }
        if let Some(j) = kept {
            used[j] = true;
        }
    }
    pieces
}

/// A delta line as the proxy reads it.
#[derive(Debug, Deserialize)]
pub struct DeltaLine {
    pub delta: Delta,
}

/// The new snapshot without its big lists, the version it must be spliced onto, and the lists
/// as pieces of that version's.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    /// The version the proxy must be running; any other and the delta does not apply.
    pub base: String,
    /// Everything but the lists below, which must be empty (or absent) here.
    pub snapshot: ProxySnapshot,
    #[serde(default)]
    pub services: Vec<Piece<Service>>,
    #[serde(default)]
    pub headless: Vec<Piece<Service>>,
    /// Absent: the new snapshot has no peers table.
    #[serde(default)]
    pub peers: Option<Vec<Piece<KnownPeer>>>,
}

/// Why a delta does not apply to the running snapshot; the proxy then asks for a whole one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("config delta is for version {base}, this proxy runs {running}")]
    OtherBase { base: String, running: String },
    #[error("config delta arrived before any whole snapshot")]
    NoBase,
    #[error(
        "config delta for a gateway: its running lists hold resolved destinations, so it takes whole snapshots"
    )]
    Gateway,
    #[error("config delta carries {0} in its snapshot as well as in pieces")]
    ListInSnapshot(&'static str),
    #[error("config delta does not fit its base's {list}: {error}")]
    Splice {
        list: &'static str,
        error: SpliceError,
    },
}

impl Delta {
    /// The version the delta describes (for an ack).
    pub fn version(&self) -> &str {
        &self.snapshot.version
    }

    /// The new snapshot, spliced from `running` (the proxy's current one, as received). The
    /// result is then validated and applied exactly as a whole snapshot is.
    pub fn rebuild(self, running: Option<&ProxySnapshot>) -> Result<ProxySnapshot, DeltaError> {
        let running = running.ok_or(DeltaError::NoBase)?;
        if running.version != self.base {
            return Err(DeltaError::OtherBase {
                base: self.base,
                running: running.version.clone(),
            });
        }
        // A gateway's running config has its external destinations merged into `headless`
        // and DNS answers laid in (SnapshotIndex::new, proxy::external_dns): not what it was
        // sent, so not a base to splice.
        if running.gateway.is_some() {
            return Err(DeltaError::Gateway);
        }
        let mut snapshot = self.snapshot;
        if !snapshot.outbound.services.is_empty() {
            return Err(DeltaError::ListInSnapshot("outbound.services"));
        }
        if !snapshot.outbound.headless.is_empty() {
            return Err(DeltaError::ListInSnapshot("outbound.headless"));
        }
        if snapshot.peers.is_some() {
            return Err(DeltaError::ListInSnapshot("peers"));
        }
        let spliced = |list, base, pieces| {
            splice(base, pieces).map_err(|error| DeltaError::Splice { list, error })
        };
        snapshot.outbound.services = spliced(
            "outbound.services",
            &running.outbound.services,
            self.services,
        )?;
        snapshot.outbound.headless = spliced(
            "outbound.headless",
            &running.outbound.headless,
            self.headless,
        )?;
        snapshot.peers = match self.peers {
            Some(pieces) => Some(
                splice(running.peers.as_deref().unwrap_or_default(), pieces).map_err(|error| {
                    DeltaError::Splice {
                        list: "peers",
                        error,
                    }
                })?,
            ),
            None => None,
        };
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the property runs are reproducible.
    struct Rng(u64);

    impl Rng {
        fn step(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.step() % n.max(1) as u64) as usize
        }
    }

    /// `list` after random edits: removals, insertions of new values, changes in place,
    /// moves and duplicates.
    fn edited(rng: &mut Rng, list: &[u32], fresh: &mut u32) -> Vec<u32> {
        let mut out = list.to_vec();
        for _ in 0..rng.below(8) {
            let at = rng.below(out.len() + 1);
            match rng.below(5) {
                0 if !out.is_empty() => {
                    out.remove(at.min(out.len() - 1));
                }
                1 => {
                    *fresh += 1;
                    out.insert(at, *fresh);
                }
                2 if !out.is_empty() => {
                    *fresh += 1;
                    let i = at.min(out.len() - 1);
                    out[i] = *fresh;
                }
                3 if !out.is_empty() => {
                    let v = out.remove(at.min(out.len() - 1));
                    let to = rng.below(out.len() + 1);
                    out.insert(to, v);
                }
                _ if !out.is_empty() => {
                    let v = out[at.min(out.len() - 1)];
                    out.insert(rng.below(out.len() + 1), v);
                }
                _ => {}
            }
        }
        out
    }

    fn pieces_of(base: &[u32], new: &[u32]) -> Vec<Piece<u32>> {
        diff(base, new)
            .into_iter()
            .map(|p| match p {
                Piece::Keep { from, len } => Piece::Keep { from, len },
                Piece::Add(at) => Piece::Add(at.into_iter().map(|i| new[i]).collect()),
            })
            .collect()
    }

    #[test]
    fn a_diff_spliced_onto_its_base_rebuilds_the_new_list_over_random_edits() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut fresh = 1_000_000;
        for round in 0..2_000 {
            let len = rng.below(60);
            let base: Vec<u32> = (0..len as u32).map(|i| i * 3 % 97).collect();
            let new = edited(&mut rng, &base, &mut fresh);
            let pieces = pieces_of(&base, &new);
            assert_eq!(
                splice(&base, pieces.clone()),
                Ok(new.clone()),
                "round {round}: {base:?} -> {new:?} via {pieces:?}"
            );
            // Only what the base lacks is sent: never more added elements than new ones
            // (plus duplicates the base holds fewer times).
            let added: usize = pieces
                .iter()
                .map(|p| match p {
                    Piece::Add(v) => v.len(),
                    Piece::Keep { .. } => 0,
                })
                .sum();
            let mut spare: HashMap<u32, usize> = HashMap::new();
            base.iter().for_each(|v| *spare.entry(*v).or_default() += 1);
            let mut needed = 0;
            for v in &new {
                match spare.get_mut(v) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => needed += 1,
                }
            }
            // Repeated values in the base are matched to their first copy only.
            let repeats = base.len() - spare.len();
            assert!(
                added <= needed + repeats,
                "round {round}: {added} added, {needed} needed"
            );
        }
    }

    #[test]
    fn one_change_in_a_long_list_is_two_keeps_and_one_add() {
        let base: Vec<u32> = (0..1_000).collect();
        let mut new = base.clone();
        new[500] = 5_000;
        assert_eq!(
            pieces_of(&base, &new),
            vec![
                Piece::Keep { from: 0, len: 500 },
                Piece::Add(vec![5_000]),
                Piece::Keep {
                    from: 501,
                    len: 499
                },
            ]
        );
        assert_eq!(
            pieces_of(&base, &base),
            vec![Piece::Keep {
                from: 0,
                len: 1_000
            }]
        );
        assert_eq!(pieces_of(&[], &[]), Vec::<Piece<u32>>::new());
    }

    #[test]
    fn pieces_outside_the_base_or_overlapping_are_refused() {
        let base = [1, 2, 3, 4];
        let keep = |from, len| Piece::<u32>::Keep { from, len };
        assert_eq!(
            splice(&base, vec![keep(2, 3)]),
            Err(SpliceError::OutOfRange {
                from: 2,
                len: 3,
                base: 4
            })
        );
        assert_eq!(
            splice(&base, vec![keep(usize::MAX, 2)]),
            Err(SpliceError::OutOfRange {
                from: usize::MAX,
                len: 2,
                base: 4
            })
        );
        // The same elements many times over would make a line of a few KB rebuild a list of
        // any size: refused at the first overlap.
        let huge: Vec<Piece<u32>> = (0..100_000).map(|_| keep(0, 4)).collect();
        assert_eq!(
            splice(&base, huge),
            Err(SpliceError::Overlap { from: 0, len: 4 })
        );
        assert_eq!(
            splice(&base, vec![keep(0, 2), keep(1, 1)]),
            Err(SpliceError::Overlap { from: 1, len: 1 })
        );
        // In bounds and disjoint, in any order, with additions.
        assert_eq!(
            splice(
                &base,
                vec![keep(2, 2), Piece::Add(vec![9]), keep(0, 2), keep(4, 0)]
            ),
            Ok(vec![3, 4, 9, 1, 2])
        );
    }

    #[test]
    fn pieces_have_the_wire_form_of_the_stream_docs() {
        let pieces = vec![Piece::Keep { from: 0, len: 3 }, Piece::Add(vec![7u32])];
        let json = serde_json::to_string(&pieces).unwrap();
        assert_eq!(json, r#"[{"keep":{"from":0,"len":3}},{"add":[7]}]"#);
        assert_eq!(
            serde_json::from_str::<Vec<Piece<u32>>>(&json).unwrap(),
            pieces
        );
        // An unknown piece is an error, not skipped.
        assert!(serde_json::from_str::<Vec<Piece<u32>>>(r#"[{"drop":{"from":0}}]"#).is_err());
    }
}
