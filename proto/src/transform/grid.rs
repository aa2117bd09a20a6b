//! [`InterestGrid`]: the entities that may be in a viewer's area of interest, found without
//! looking at every entity of the world.
//!
//! A [`ClientReplicator`](super::ClientReplicator) given every entity of the world does work for
//! each of them every tick, so a server tick costs clients × entities. The grid is built once
//! per tick (a sort of the entities by cell) and each client then looks only at the cells around
//! its viewer, so a tick costs clients × entities-nearby.
//!
//! The result is exact, not an approximation: [`InterestGrid::query`] returns every entity
//! within the interest radius plus hysteresis of the viewer (horizontally, which includes all
//! within that distance in 3-D), plus every entity the replicator still holds state for
//! ([`ClientReplicator::retained`](super::ClientReplicator::retained): in interest, or owed a
//! "left interest" notice). An entity outside that set is one the replicator would neither bring
//! into interest nor send anything about this tick, so its datagrams are byte for byte the ones
//! the whole world would give (a test below checks this on a moving crowd).

use super::replicator::EntitySample;
use crate::types::{EntityId, Vec3};

/// Interest cells of one tick: each entity's horizontal (x, z) cell, sorted by cell.
///
/// Cells are squares whose side is the query radius divided by [`CELLS_PER_RADIUS`] (or the
/// radius itself where that division is not exact), so the (2k + 1)² cells around the viewer's
/// cell, k cells per radius, hold every entity within that radius.
#[derive(Clone, Debug, Default)]
pub struct InterestGrid {
    /// The radius the grid was built for, metres.
    radius_m: f32,
    /// Side of a cell, metres: `radius_m` / `cells_per_radius`, exactly.
    cell_m: f32,
    /// Cells per radius: [`CELLS_PER_RADIUS`], or 1 where the radius does not divide exactly.
    cells_per_radius: i32,
    /// One entry per sample at a finite position, sorted by cell (entities at non-finite
    /// positions are never within any radius). Positions are copied in so that a query reads
    /// this one sequential array, not the samples.
    cells: Vec<CellEntry>,
    /// Scratch: the samples a query finds within the radius when not marked in `marks`
    /// straight away, each as its id (high half) and index (low half), so that ordering them
    /// orders by id without reading the samples; then the indices of retained samples beyond
    /// the radius.
    picked: Vec<u64>,
    /// Scratch: one bit per sample, all clear between queries; orders a query's picks by
    /// index (so by id) when that is cheaper than sorting them.
    marks: Vec<u64>,
    /// How many samples the last query found nearby: whether the next one marks its finds
    /// straight in `marks` is decided from it (either way gives the same answer).
    last_nearby: usize,
}

/// One sample in the grid.
#[derive(Clone, Copy, Debug)]
struct CellEntry {
    /// Its cell's [`key`].
    key: u64,
    /// Its index in the samples.
    index: u32,
    /// Its entity id (fills what would be padding).
    id: EntityId,
    /// Its horizontal position, metres.
    x: f32,
    z: f32,
}

/// Maps a signed cell coordinate to an unsigned one with the same order.
#[inline]
fn ordered(v: i32) -> u64 {
    u64::from((v as u32) ^ 0x8000_0000)
}

/// The key of cell (cx, cz): rows (z) major, so the cells cx − 1 ..= cx + 1 of one row are one
/// contiguous key range.
#[inline]
fn key(cx: i32, cz: i32) -> u64 {
    (ordered(cz) << 32) | ordered(cx)
}

/// Cells per query radius (a power of two, so that a cell's side is the radius divided
/// exactly): a query scans (2k + 1)² cells of side r / k, less the four corner cells no point
/// within r of the viewer's cell reaches when k = 4: (81 − 4) / 16 ≈ 4.8 r² for the π r² it
/// needs, where cells of side r (k = 1) scanned 9 r². In `server_ticks` (1,000 clients seeing
/// about 94 entities each) that is about 180 entities looked at per query instead of 324,
/// for six more binary searches of the cell list.
const CELLS_PER_RADIUS: i32 = 4;

/// Most bitset words scanned per pick to order a query's picks through the bitset rather than
/// by sorting them.
const MARK_WORDS_PER_PICK_MAX: usize = 1;

/// A picked sample as one integer: its id, then its index.
#[inline]
fn picked(id: EntityId, index: usize) -> u64 {
    (u64::from(id.0) << 32) | index as u64
}

impl InterestGrid {
    /// An empty grid.
    pub fn new() -> InterestGrid {
        InterestGrid::default()
    }

    /// Whether a radius can be served by a grid; otherwise queries return every entity.
    fn usable(radius_m: f32) -> bool {
        radius_m.is_finite() && radius_m > 0.0
    }

    #[inline]
    fn cell_of(&self, x: f32, z: f32) -> (i32, i32) {
        // `as` saturates, so far-away positions land in the outermost cells (still exact: the
        // distance check below decides).
        (
            (x / self.cell_m).floor() as i32,
            (z / self.cell_m).floor() as i32,
        )
    }

    /// Rebuilds the grid for this tick's `samples` and a query radius of `radius_m` metres
    /// (interest radius plus hysteresis). O(n log n) in the entities.
    ///
    /// `retained` passed to [`InterestGrid::query`] is fastest in ascending id order (as
    /// [`ClientReplicator::retained`](super::ClientReplicator::retained) gives them).
    pub fn build(&mut self, samples: &[EntitySample], radius_m: f32) {
        self.cells.clear();
        self.radius_m = radius_m;
        if !Self::usable(radius_m) {
            return;
        }
        // A query's reach in cells is exact only if the cell divides the radius exactly (not
        // so for a subnormal quotient).
        let cell_m = radius_m / CELLS_PER_RADIUS as f32;
        (self.cell_m, self.cells_per_radius) =
            if cell_m.is_normal() && cell_m * CELLS_PER_RADIUS as f32 == radius_m {
                (cell_m, CELLS_PER_RADIUS)
            } else {
                (radius_m, 1)
            };
        for (i, s) in samples.iter().enumerate() {
            let [x, _, z] = s.position.to_array();
            if x.is_finite() && z.is_finite() {
                let (cx, cz) = self.cell_of(x, z);
                self.cells.push(CellEntry {
                    key: key(cx, cz),
                    index: i as u32,
                    id: s.id,
                    x,
                    z,
                });
            }
        }
        self.cells.sort_unstable_by_key(|c| (c.key, c.index));
        self.marks.clear();
        self.marks.resize(samples.len().div_ceil(64), 0);
    }

    /// Writes into `out` (cleared first), sorted by id, the samples a viewer at `viewer` may
    /// have in interest: every sample within the built radius horizontally, plus those of
    /// `retained` still in `samples`. `samples` must be the slice the grid was built from
    /// (sorted by id). When the grid was built for an unusable radius (not finite and
    /// positive), every sample is written.
    pub fn query(
        &mut self,
        samples: &[EntitySample],
        viewer: Vec3,
        retained: impl Iterator<Item = EntityId>,
        out: &mut Vec<EntitySample>,
    ) {
        out.clear();
        if !Self::usable(self.radius_m) {
            out.extend_from_slice(samples);
            return;
        }
        self.picked.clear();
        // Ordered by id: through the bitset when scanning its words costs less than sorting
        // (a word covers 64 samples, a sort costs a few steps per pick), else by a sort. When
        // the last query found enough for the bitset, finds are marked in it at once (a list
        // of picks first, then marking them, cost ≈ 20 instructions a find more).
        let direct = self.marks.len() <= self.last_nearby * MARK_WORDS_PER_PICK_MAX
            && self.marks.len() * 64 >= samples.len();
        let [vx, _, vz] = viewer.to_array();
        if vx.is_finite() && vz.is_finite() {
            let r2 = self.radius_m * self.radius_m;
            let (cx, cz) = self.cell_of(vx, vz);
            let k = self.cells_per_radius;
            // A point in cell (i, j) from the viewer's is more than (|i| − 1, |j| − 1) cells
            // away on each axis: for k = 4 the corner cells (±4, ±4) are over √18 cells, so
            // beyond r = 4 cells. Not where rows saturate (a row may then stand for several).
            let clip_corners = k == 4 && cz.checked_sub(k).is_some() && cz.checked_add(k).is_some();
            let mut last_row = None;
            // Rows ascend (saturating at the edge of the coordinate range), so the next row's
            // entries are found after the last one's.
            let mut from = 0;
            for j in -k..=k {
                let row = cz.saturating_add(j);
                if last_row == Some(row) {
                    continue; // saturated at the edge of the coordinate range
                }
                last_row = Some(row);
                let reach = if clip_corners && j.abs() == k {
                    k - 1
                } else {
                    k
                };
                let lo = key(cx.saturating_sub(reach), row);
                let hi = key(cx.saturating_add(reach), row);
                let start = from + self.cells[from..].partition_point(|c| c.key < lo);
                from = start;
                for c in &self.cells[start..] {
                    if c.key > hi {
                        break;
                    }
                    let (dx, dz) = (c.x - vx, c.z - vz);
                    if dx * dx + dz * dz <= r2 {
                        if direct {
                            let i = c.index as usize;
                            self.marks[i / 64] |= 1 << (i % 64);
                        } else {
                            self.picked.push(picked(c.id, c.index as usize));
                        }
                    }
                }
            }
        }
        // The samples nearby, in id order, straight into `out`.
        if direct
            || (self.marks.len() <= self.picked.len() * MARK_WORDS_PER_PICK_MAX
                && self.marks.len() * 64 >= samples.len())
        {
            for &p in &self.picked {
                let i = p as u32 as usize;
                self.marks[i / 64] |= 1 << (i % 64);
            }
            for (w, word) in self.marks.iter_mut().enumerate() {
                let mut bits = std::mem::take(word);
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    out.push(samples[i]);
                }
            }
        } else {
            self.picked.sort_unstable();
            out.extend(self.picked.iter().map(|&p| samples[p as u32 as usize]));
        }
        // The retained come sorted by id and are mostly nearby already: walk them along the
        // samples nearby and look up (binary search) only those beyond the radius.
        let nearby = out.len();
        self.last_nearby = nearby;
        self.picked.clear();
        let mut j = 0;
        for id in retained {
            while j < nearby && out[j].id < id {
                j += 1;
            }
            if j < nearby && out[j].id == id {
                continue;
            }
            if let Ok(i) = samples.binary_search_by_key(&id, |s| s.id) {
                self.picked.push(i as u64);
            }
        }
        if !self.picked.is_empty() {
            out.extend(self.picked.iter().map(|&i| samples[i as usize]));
            out.sort_unstable_by_key(|s| s.id);
            out.dedup_by_key(|s| s.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::time::{Tick, Time};
    use crate::transform::{AckHeader, ClientReplicator, TickInput, TransformConfig};
    use crate::types::Transform;

    fn sample(id: u32, x: f32, z: f32, qz: &crate::transform::Quantizer) -> EntitySample {
        let t = Transform {
            position: Vec3::new(x, 1.0, z),
            ..Transform::default()
        };
        EntitySample::new(EntityId(id), &t, qz)
    }

    #[test]
    fn query_finds_exactly_the_entities_within_the_radius_plus_the_retained() {
        let config = TransformConfig::default();
        let qz = crate::transform::Quantizer::new(&config).unwrap();
        let mut rng = Rng::new(7);
        let samples: Vec<EntitySample> = (1..=2_000)
            .map(|id| {
                let x = (rng.f64() * 2_000.0 - 1_000.0) as f32;
                let z = (rng.f64() * 2_000.0 - 1_000.0) as f32;
                sample(id, x, z, &qz)
            })
            .collect();
        let radius = 100.0;
        let mut grid = InterestGrid::new();
        grid.build(&samples, radius);
        let mut out = Vec::new();
        for v in [[0.0, 0.0, 0.0], [-999.0, 5.0, 999.0], [100.0, 0.0, -100.0]] {
            let retained = [EntityId(3), EntityId(1_999), EntityId(5_000)];
            grid.query(&samples, v.into(), retained.into_iter(), &mut out);
            let expected: Vec<EntityId> = samples
                .iter()
                .filter(|s| {
                    let (dx, dz) = (s.position[0] - v[0], s.position[2] - v[2]);
                    dx * dx + dz * dz <= radius * radius || retained.contains(&s.id)
                })
                .map(|s| s.id)
                .collect();
            let got: Vec<EntityId> = out.iter().map(|s| s.id).collect();
            assert_eq!(got, expected, "viewer at {v:?}");
        }
    }

    /// Cells are a fraction of the radius: entities at exactly the radius (along the axes, on
    /// the diagonals), viewers on cell corners, radii that divide exactly and ones that do
    /// not, near the origin and far from it, are found exactly as a brute-force filter finds
    /// them.
    #[test]
    fn fine_cells_find_exactly_what_a_brute_force_filter_finds() {
        let config = TransformConfig::default();
        let qz = crate::transform::Quantizer::new(&config).unwrap();
        let mut rng = Rng::new(11);
        for radius in [64.0f32, 60.0, 7.77, 0.3, 1e-3] {
            for centre in [0.0f32, 1_000.0, -3.0e6, 1.0e9] {
                let mut samples = Vec::new();
                let mut id = 1;
                let mut push = |x: f32, z: f32| {
                    samples.push(sample(id, x, z, &qz));
                    id += 1;
                };
                for _ in 0..600 {
                    let a = rng.f64() * std::f64::consts::TAU;
                    // Mostly near the rim, some well inside and outside.
                    let d = radius as f64
                        * (0.9 + 0.2 * rng.f64())
                        * if rng.f64() < 0.2 {
                            2.0 * rng.f64()
                        } else {
                            1.0
                        };
                    push(
                        (centre as f64 + d * a.cos()) as f32,
                        (centre as f64 + d * a.sin()) as f32,
                    );
                }
                for (dx, dz) in [(1.0f32, 0.0f32), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)] {
                    push(centre + dx * radius, centre + dz * radius);
                    let h = radius * std::f32::consts::FRAC_1_SQRT_2;
                    push(centre + (dx + dz) * h, centre + (dz - dx) * h);
                }
                samples.sort_by_key(|s| s.id);
                let mut grid = InterestGrid::new();
                grid.build(&samples, radius);
                let mut out = Vec::new();
                let quarter = radius / 4.0;
                for (vx, vz) in [
                    (centre, centre),
                    (centre + quarter, centre - quarter),
                    (centre + 0.37 * radius, centre + 0.91 * radius),
                ] {
                    grid.query(
                        &samples,
                        Vec3::new(vx, 0.0, vz),
                        std::iter::empty(),
                        &mut out,
                    );
                    let expected: Vec<EntityId> = samples
                        .iter()
                        .filter(|s| {
                            let (dx, dz) = (s.position[0] - vx, s.position[2] - vz);
                            dx * dx + dz * dz <= radius * radius
                        })
                        .map(|s| s.id)
                        .collect();
                    let got: Vec<EntityId> = out.iter().map(|s| s.id).collect();
                    assert_eq!(got, expected, "radius {radius}, viewer ({vx}, {vz})");
                }
            }
        }
    }

    #[test]
    fn hostile_positions_and_radii_never_panic_or_lose_the_retained() {
        let config = TransformConfig::default();
        let qz = crate::transform::Quantizer::new(&config).unwrap();
        let samples: Vec<EntitySample> = [
            (1, f32::NAN, 0.0),
            (2, f32::INFINITY, 0.0),
            (3, f32::MAX, f32::MIN),
            (4, 0.0, 0.0),
        ]
        .into_iter()
        .map(|(id, x, z)| {
            let mut s = sample(id, 0.0, 0.0, &qz);
            s.position = Vec3::new(x, 0.0, z);
            s
        })
        .collect();
        let mut out = Vec::new();
        for radius in [f32::NAN, 0.0, -1.0, f32::INFINITY] {
            let mut grid = InterestGrid::new();
            grid.build(&samples, radius);
            grid.query(&samples, Vec3::ZERO, std::iter::empty(), &mut out);
            assert_eq!(
                out.len(),
                4,
                "radius {radius}: unusable radii give everything"
            );
        }
        let mut grid = InterestGrid::new();
        grid.build(&samples, 10.0);
        for v in [[f32::NAN; 3], [f32::MAX, 0.0, f32::MIN], [0.0; 3]] {
            grid.query(&samples, v.into(), [EntityId(1)].into_iter(), &mut out);
            assert!(out.iter().any(|s| s.id == EntityId(1)), "retained kept");
        }
        grid.query(
            &samples,
            Vec3::new(f32::MAX, 0.0, f32::MIN),
            std::iter::empty(),
            &mut out,
        );
        assert_eq!(
            out.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![EntityId(3)],
            "the far corner finds the entity there"
        );
    }

    /// The point of the grid: a replicator fed the grid's subset writes the very datagrams one
    /// fed the whole world writes, tick after tick, as entities wander in and out of interest,
    /// appear and disappear, with acks of some datagrams.
    #[test]
    fn replicator_fed_by_the_grid_writes_the_same_datagrams_as_with_the_whole_world() {
        let config = TransformConfig {
            interest_radius_m: 40.0,
            interest_hysteresis_m: 5.0,
            ..TransformConfig::default()
        };
        let qz = crate::transform::Quantizer::new(&config).unwrap();
        let radius = config.interest_radius_m + config.interest_hysteresis_m;
        let mut rng = Rng::new(11);
        let n = 300u32;
        let mut pos: Vec<[f32; 2]> = (0..n)
            .map(|_| {
                [
                    (rng.f64() * 300.0 - 150.0) as f32,
                    (rng.f64() * 300.0 - 150.0) as f32,
                ]
            })
            .collect();
        let mut whole = ClientReplicator::new(config.clone(), None).unwrap();
        let mut gridded = ClientReplicator::new(config.clone(), None).unwrap();
        let mut grid = InterestGrid::new();
        let (mut out_a, mut out_b, mut subset) = (Vec::new(), Vec::new(), Vec::new());
        let mut viewer = Vec3::new(0.0, 1.0, 0.0);
        let mut compared = 0;
        for tick in 1..600u64 {
            for p in pos.iter_mut() {
                p[0] += (rng.f64() * 4.0 - 2.0) as f32;
                p[1] += (rng.f64() * 4.0 - 2.0) as f32;
            }
            viewer[0] += 0.8;
            if viewer[0] > 150.0 {
                viewer[0] = -150.0;
            }
            // Entities 1..=n, minus a window that comes and goes (removals and re-adds).
            let gone = |id: u32| (tick / 50) % 2 == 1 && (id % 7 == 0);
            let samples: Vec<EntitySample> = (0..n)
                .filter(|&i| !gone(i + 1))
                .map(|i| sample(i + 1, pos[i as usize][0], pos[i as usize][1], &qz))
                .collect();
            grid.build(&samples, radius);
            grid.query(&samples, viewer, gridded.retained(), &mut subset);
            let now = Time(tick * 33_333);
            let mk = |entities| TickInput {
                tick: Tick(tick),
                now,
                viewer: Some(viewer),
                entities,
                max_datagram_size: 1_200,
                own_blob: None,
            };
            out_a.clear();
            out_b.clear();
            let a = whole.write_tick(&mk(&samples), &mut out_a).unwrap();
            let b = gridded.write_tick(&mk(&subset), &mut out_b).unwrap();
            assert_eq!(a, b, "tick {tick}: summaries");
            assert_eq!(out_a, out_b, "tick {tick}: datagram bytes");
            compared += out_a.len();
            // The client acks most ticks' datagrams (the same header to both).
            if tick % 5 != 0 && !out_a.is_empty() {
                let seq = u16::from_le_bytes([out_a[0][1], out_a[0][2]]);
                let ack = AckHeader {
                    latest: crate::transform::Seq(seq),
                    received: 1,
                };
                let later = Time(now.0 + 40_000);
                whole.handle_ack(&ack, later);
                gridded.handle_ack(&ack, later);
            }
        }
        // About one datagram per tick: the budget stops the packer before a second one.
        assert!(compared > 300, "the run wrote datagrams: {compared}");
    }
}
