//! What a simulated client does, without I/O: where it walks and when it chats or edits.
//! Time is an argument and randomness is seeded, so a seed reproduces every client's script.

use neonet_proto::rng::Rng;

/// Walking speed, in m/s: 1.4, the average human walking pace.
pub const WALK_SPEED_M_PER_S: f64 = 1.4;

/// Half the side of the square walkers roam by default, in m: 50. A 100 m plaza keeps a crowd
/// within each other's interest. `run` widens it with the number of clients (see
/// `run::walk_area_half_m`) so each client sees about as many others as the target.
pub const WALK_AREA_HALF_M: f64 = 50.0;

/// Longest pause at a waypoint, in s: 3, so a crowd always has some avatars at rest.
pub const WALK_PAUSE_MAX_S: f64 = 3.0;

/// Events at random times with a mean rate (a Poisson process): chat messages, edits.
#[derive(Clone, Debug)]
pub struct PoissonTimer {
    rate_per_s: f64,
    next_s: f64,
}

impl PoissonTimer {
    /// A timer whose events come `rate_per_s` times per second on average, from time 0;
    /// a rate of zero never fires.
    pub fn new(rate_per_s: f64, rng: &mut Rng) -> PoissonTimer {
        let mut timer = PoissonTimer {
            rate_per_s,
            next_s: 0.0,
        };
        timer.next_s = timer.gap_s(rng);
        timer
    }

    fn gap_s(&self, rng: &mut Rng) -> f64 {
        if self.rate_per_s > 0.0 {
            // Exponential inter-arrival time; 1 - u is in (0, 1], so the log is finite.
            -(1.0 - rng.f64()).ln() / self.rate_per_s
        } else {
            f64::INFINITY
        }
    }

    /// How many events fell due up to `now_s` (seconds since the client started).
    pub fn due(&mut self, now_s: f64, rng: &mut Rng) -> u32 {
        let mut n = 0;
        while self.next_s <= now_s {
            n += 1;
            self.next_s += self.gap_s(rng);
        }
        n
    }
}

/// A walker going between random waypoints, pausing at each.
#[derive(Clone, Debug)]
pub struct Walker {
    position: [f64; 2],
    target: [f64; 2],
    pause_left_s: f64,
    half_m: f64,
}

/// Where a walker is and how it moves, in metres on the ground plane (x, z).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Motion {
    /// Position, m.
    pub position: [f64; 2],
    /// Velocity, m/s (zero while paused).
    pub velocity: [f64; 2],
}

impl Walker {
    /// A walker at a random spot in the default area.
    #[cfg(test)]
    pub fn new(rng: &mut Rng) -> Walker {
        Walker::stationary(rng, WALK_AREA_HALF_M)
    }

    /// A walker at a uniformly random spot going to another: the random-waypoint walk's usual
    /// start, which is not its long-run state. Walkers between uniform waypoints crowd the middle
    /// of the square (legs cross it more often than they pass its edges), so a crowd started
    /// uniformly drifts inward for minutes: each player then sees more others, and a soak saw
    /// the relay's CPU and memory grow with that drift, not with anything it kept.
    #[cfg(test)]
    fn uniform(rng: &mut Rng, half_m: f64) -> Walker {
        Walker {
            position: random_point(rng, half_m),
            target: random_point(rng, half_m),
            pause_left_s: 0.0,
            half_m,
        }
    }

    /// A walker in the square of half side `half_m` around the origin, going to random spots in
    /// it, started where the random-waypoint walk would be after a long time, so a crowd of them
    /// is as dense at the start of a run as after ten minutes.
    ///
    /// It is drawn from the random-waypoint walk's stationary distribution (Navidi and Camp,
    /// "Stationary distributions for the random waypoint mobility model", 2004): paused with the
    /// share of time walkers spend paused, at a waypoint (uniform) with the rest of a pause
    /// (the residual of a uniform one); otherwise on a leg picked with probability in proportion
    /// to its length (a walker spends time on a leg in proportion to it), at a uniform point
    /// along it, going to its end.
    pub fn stationary(rng: &mut Rng, half_m: f64) -> Walker {
        // Mean leg between two uniform points of a square of side a: 0.5214 a (Ghosh, 1951).
        let mean_leg_s = 0.5214 * 2.0 * half_m / WALK_SPEED_M_PER_S;
        let mean_pause_s = WALK_PAUSE_MAX_S / 2.0;
        if rng.f64() < mean_pause_s / (mean_pause_s + mean_leg_s) {
            return Walker {
                position: random_point(rng, half_m),
                target: random_point(rng, half_m),
                // The residual of a U(0, max) pause has density ∝ (1 − t/max): its inverse CDF.
                pause_left_s: WALK_PAUSE_MAX_S * (1.0 - rng.f64().sqrt()),
                half_m,
            };
        }
        // Rejection: a uniform leg kept with probability length / longest (the diagonal).
        let longest = 2.0 * half_m * std::f64::consts::SQRT_2;
        loop {
            let a = random_point(rng, half_m);
            let b = random_point(rng, half_m);
            let len = (b[0] - a[0]).hypot(b[1] - a[1]);
            if rng.f64() * longest < len {
                let u = rng.f64();
                return Walker {
                    position: [a[0] + u * (b[0] - a[0]), a[1] + u * (b[1] - a[1])],
                    target: b,
                    pause_left_s: 0.0,
                    half_m,
                };
            }
        }
    }

    /// Where it is now, m (x, z).
    pub fn position(&self) -> [f64; 2] {
        self.position
    }

    /// Advances by `dt_s` seconds.
    pub fn step(&mut self, dt_s: f64, rng: &mut Rng) -> Motion {
        if self.pause_left_s > 0.0 {
            self.pause_left_s -= dt_s;
            return Motion {
                position: self.position,
                velocity: [0.0, 0.0],
            };
        }
        let d = [
            self.target[0] - self.position[0],
            self.target[1] - self.position[1],
        ];
        let dist = d[0].hypot(d[1]);
        let step = WALK_SPEED_M_PER_S * dt_s;
        if dist <= step {
            self.position = self.target;
            self.target = random_point(rng, self.half_m);
            self.pause_left_s = rng.range_f64(0.0, WALK_PAUSE_MAX_S);
            return Motion {
                position: self.position,
                velocity: [0.0, 0.0],
            };
        }
        let dir = [d[0] / dist, d[1] / dist];
        self.position[0] += dir[0] * step;
        self.position[1] += dir[1] * step;
        Motion {
            position: self.position,
            velocity: [dir[0] * WALK_SPEED_M_PER_S, dir[1] * WALK_SPEED_M_PER_S],
        }
    }
}

/// What a client does in one frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameActions {
    /// Where the avatar is and how it moves (`None` with `--move still`).
    pub motion: Option<Motion>,
    /// Chat messages to send this frame.
    pub chats: u32,
    /// Blueprint edits to make this frame.
    pub edits: u32,
}

/// One client's whole script, fixed by its seed.
#[derive(Clone, Debug)]
pub struct ClientScript {
    rng: Rng,
    walker: Option<Walker>,
    chat: PoissonTimer,
    edit: PoissonTimer,
    last_s: f64,
}

impl ClientScript {
    /// The script of a client that walks (or stands still when `walk` is false) and sends
    /// `chat_per_s` messages and `edits_per_s` edits per second on average.
    #[cfg(test)]
    pub fn new(seed: u64, walk: bool, chat_per_s: f64, edits_per_s: f64) -> ClientScript {
        ClientScript::in_area(seed, walk, chat_per_s, edits_per_s, WALK_AREA_HALF_M)
    }

    /// The script of a client that walks (or stands still when `walk` is false) in the square
    /// of half side `half_m`, and sends `chat_per_s` messages and `edits_per_s` edits per
    /// second on average.
    pub fn in_area(
        seed: u64,
        walk: bool,
        chat_per_s: f64,
        edits_per_s: f64,
        half_m: f64,
    ) -> ClientScript {
        let mut rng = Rng::new(seed);
        let walker = walk.then(|| Walker::stationary(&mut rng, half_m));
        let chat = PoissonTimer::new(chat_per_s, &mut rng);
        let edit = PoissonTimer::new(edits_per_s, &mut rng);
        ClientScript {
            rng,
            walker,
            chat,
            edit,
            last_s: 0.0,
        }
    }

    /// Where the walker starts, m (x, z); `None` for a client standing still.
    pub fn start_position(&self) -> Option<[f64; 2]> {
        self.walker.as_ref().map(Walker::position)
    }

    /// The actions of the frame at `now_s` seconds since the client joined.
    pub fn frame(&mut self, now_s: f64) -> FrameActions {
        let dt_s = (now_s - self.last_s).max(0.0);
        self.last_s = now_s;
        let rng = &mut self.rng;
        FrameActions {
            motion: self.walker.as_mut().map(|w| w.step(dt_s, rng)),
            chats: self.chat.due(now_s, rng),
            edits: self.edit.due(now_s, rng),
        }
    }
}

fn random_point(rng: &mut Rng, half_m: f64) -> [f64; 2] {
    [
        rng.range_f64(-half_m, half_m),
        rng.range_f64(-half_m, half_m),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_rate_is_about_right() {
        let mut rng = Rng::new(9);
        let mut timer = PoissonTimer::new(2.0, &mut rng);
        let n = timer.due(1000.0, &mut rng);
        assert!((1800..2200).contains(&n), "{n} events in 1000 s at 2/s");
        let mut never = PoissonTimer::new(0.0, &mut rng);
        assert_eq!(never.due(1e9, &mut rng), 0);
    }

    #[test]
    fn script_is_fixed_by_its_seed() {
        let run = |seed| {
            let mut script = ClientScript::new(seed, true, 1.0, 0.5);
            (1..=300)
                .map(|f| script.frame(f64::from(f) / 30.0))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        let mut still = ClientScript::new(1, false, 0.0, 0.0);
        assert_eq!(
            still.frame(1.0),
            FrameActions {
                motion: None,
                chats: 0,
                edits: 0
            }
        );
    }

    /// The share of a crowd in the middle quarter of the square (the inner square of half the
    /// side), now and after `after_s` seconds of walking.
    fn middle_share(walkers: &mut [Walker], rng: &mut Rng, after_s: f64) -> (f64, f64) {
        let share = |ws: &[Walker]| {
            let inner = ws
                .iter()
                .filter(|w| {
                    w.position()
                        .iter()
                        .all(|c| c.abs() <= WALK_AREA_HALF_M / 2.0)
                })
                .count();
            inner as f64 / ws.len() as f64
        };
        let start = share(walkers);
        let dt = 0.5;
        for _ in 0..(after_s / dt) as usize {
            for w in walkers.iter_mut() {
                w.step(dt, rng);
            }
        }
        (start, share(walkers))
    }

    #[test]
    fn a_crowd_started_stationary_is_as_dense_in_the_middle_as_five_minutes_on() {
        let mut rng = Rng::new(21);
        let n = 10_000;
        // Five minutes: about six legs across the 100 m plaza each (a uniform start has settled
        // after about three).
        let mut stationary: Vec<Walker> = (0..n)
            .map(|_| Walker::stationary(&mut rng, WALK_AREA_HALF_M))
            .collect();
        let (start, later) = middle_share(&mut stationary, &mut rng, 300.0);
        assert!(
            (start - later).abs() < 0.025,
            "stationary start: {start:.3} of the crowd in the middle, {later:.3} five minutes on"
        );
        // The uniform start is a quarter in the middle and drifts inward: what the stationary
        // start avoids (and what makes this test able to fail).
        let mut uniform: Vec<Walker> = (0..n)
            .map(|_| Walker::uniform(&mut rng, WALK_AREA_HALF_M))
            .collect();
        let (start, later) = middle_share(&mut uniform, &mut rng, 300.0);
        assert!((start - 0.25).abs() < 0.025, "{start}");
        assert!(
            later > start + 0.15,
            "uniform start: {start:.3} then {later:.3}"
        );
    }

    #[test]
    fn walker_stays_in_the_area_at_walking_speed() {
        let mut rng = Rng::new(4);
        let mut w = Walker::new(&mut rng);
        for _ in 0..10_000 {
            let m = w.step(1.0 / 30.0, &mut rng);
            assert!(m.position.iter().all(|c| c.abs() <= WALK_AREA_HALF_M));
            let speed = m.velocity[0].hypot(m.velocity[1]);
            assert!(speed <= WALK_SPEED_M_PER_S + 1e-9);
        }
    }
}
