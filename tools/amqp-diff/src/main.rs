//! amqp-diff: a differential tester for AMQP 0-9-1 brokers. See README.md.

mod diff;
mod exec;
mod gen;
mod norm;
mod ops;
mod shrink;

use clap::{Parser, Subcommand};
use diff::{compare, AllowList, Divergence};
use exec::{execute, parse_url, ExecConfig, Trace, Url};
use gen::{generate, GenConfig};
use ops::Step;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "amqp-diff",
    about = "Runs the same random AMQP 0-9-1 sequences against two brokers and reports where they differ"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Timing {
    /// Milliseconds the brokers must stay quiet after each op before the next.
    #[arg(long, default_value_t = 20)]
    settle_ms: u64,
    /// Seconds to wait for a synchronous reply.
    #[arg(long, default_value_t = 5)]
    reply_timeout: u64,
    /// Compare closes by reply code and class/method ids only, not by text: to explore past
    /// known wording and check-order differences (never for CI).
    #[arg(long)]
    lenient: bool,
}

impl Timing {
    fn config(&self) -> ExecConfig {
        ExecConfig {
            settle: Duration::from_millis(self.settle_ms),
            reply_timeout: Duration::from_secs(self.reply_timeout),
            lenient: self.lenient,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate sequences from seeds and run each against both brokers.
    Run {
        /// The reference broker (RabbitMQ).
        #[arg(long)]
        a: String,
        /// The broker under test.
        #[arg(long)]
        b: String,
        /// First seed; sequence i uses seed + i.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of sequences (default: unlimited with --duration, else 100).
        #[arg(long)]
        count: Option<u64>,
        /// Stop starting new sequences after this long, e.g. 120s, 10m, 1h.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Ops per sequence.
        #[arg(long, default_value_t = 40)]
        ops: usize,
        /// Connections per sequence.
        #[arg(long, default_value_t = 3)]
        conns: u8,
        /// Comma-separated op kinds never to generate (e.g. `basic.publish,tx.select`;
        /// `immediate` for immediate publishes).
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        /// Documented divergences (`REGEX || reason` per line).
        #[arg(long)]
        allowlist: Option<PathBuf>,
        /// Where minimal reproductions are written.
        #[arg(long, default_value = "amqp-diff-out")]
        out: PathBuf,
        /// Report divergences without shrinking them.
        #[arg(long)]
        no_shrink: bool,
        #[command(flatten)]
        timing: Timing,
    },
    /// Run a repro file (or any JSON list of steps) against one or two brokers.
    Replay {
        file: PathBuf,
        #[arg(long)]
        a: String,
        #[arg(long)]
        b: Option<String>,
        /// Shrink the divergence further and write FILE.min.json.
        #[arg(long)]
        shrink: bool,
        #[command(flatten)]
        timing: Timing,
    },
    /// Print the sequence of a seed.
    Gen {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 40)]
        ops: usize,
        #[arg(long, default_value_t = 3)]
        conns: u8,
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s}"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("bad duration unit in {s} (s, m, h)")),
    }))
}

/// The runnable artefact of a divergence.
#[derive(Serialize, Deserialize)]
struct Repro {
    /// How to run it, and what it shows.
    comment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    divergence: Option<Divergence>,
    steps: Vec<Step>,
}

/// The repro as JSON with one step per line, so that it reads (and diffs) like a listing.
fn repro_json(r: &Repro) -> String {
    let mut head = serde_json::to_value(r).unwrap();
    head.as_object_mut().unwrap().remove("steps");
    let head = serde_json::to_string_pretty(&head).unwrap();
    let head = head.trim_end().trim_end_matches('}').trim_end();
    let steps: Vec<String> = r
        .steps
        .iter()
        .map(|s| format!("    {}", serde_json::to_string(s).unwrap()))
        .collect();
    format!("{head},\n  \"steps\": [\n{}\n  ]\n}}\n", steps.join(",\n"))
}

fn load_steps(path: &Path) -> Result<Vec<Step>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(r) = serde_json::from_str::<Repro>(&text) {
        return Ok(r.steps);
    }
    serde_json::from_str::<Vec<Step>>(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Both brokers, run side by side.
fn run_both(a: &Url, b: &Url, steps: &[Step], cfg: &ExecConfig) -> (Trace, Trace) {
    std::thread::scope(|s| {
        let ha = s.spawn(|| execute(a, steps, cfg));
        let tb = execute(b, steps, cfg);
        (ha.join().expect("side A panicked"), tb)
    })
}

fn diverge(a: &Url, b: &Url, steps: &[Step], cfg: &ExecConfig) -> Option<Divergence> {
    let (ta, tb) = run_both(a, b, steps, cfg);
    compare(steps, &ta.steps, &tb.steps)
}

/// Shrinks `steps` to a 1-minimal sequence that still diverges in the same class.
fn shrink_divergence(
    a: &Url,
    b: &Url,
    steps: &[Step],
    d: &Divergence,
    cfg: &ExecConfig,
) -> (Vec<Step>, Divergence) {
    let class = d.class();
    // Ops after the divergent one cannot matter (unless the probe diverged).
    let mut start: Vec<Step> = steps[..(d.index + 1).min(steps.len())].to_vec();
    let mut runs = 0;
    let still = |s: &[Step], runs: &mut u32| {
        *runs += 1;
        matches!(diverge(a, b, s, cfg), Some(x) if x.class() == class)
    };
    if !still(&start, &mut runs) {
        start = steps.to_vec();
    }
    let t0 = Instant::now();
    let min = shrink::ddmin(start, |s| still(s, &mut runs));
    let last = diverge(a, b, &min, cfg).unwrap_or_else(|| d.clone());
    eprintln!(
        "  shrunk {} -> {} ops in {runs} runs, {:.0?}",
        steps.len(),
        min.len(),
        t0.elapsed()
    );
    (min, last)
}

fn listing(steps: &[Step]) -> String {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i:3}  {s}\n"))
        .collect()
}

fn print_divergence(d: &Divergence) {
    eprintln!("  first divergence at op {} ({})", d.index, d.kind);
    eprintln!("  A:");
    for l in &d.a {
        eprintln!("    {l}");
    }
    eprintln!("  B:");
    for l in &d.b {
        eprintln!("    {l}");
    }
}

fn write_repro(path: &Path, seed: Option<u64>, steps: &[Step], d: &Divergence) {
    let repro = Repro {
        comment: format!(
            "amqp-diff replay {} --a URL --b URL   ({})",
            path.display(),
            d.signature()
        ),
        seed,
        divergence: Some(d.clone()),
        steps: steps.to_vec(),
    };
    let _ = std::fs::write(path, repro_json(&repro));
    let mut txt = format!(
        "# {}\n# replay: amqp-diff replay {} --a URL --b URL\n",
        d.signature(),
        path.display()
    );
    txt += &listing(steps);
    txt += &format!("# first divergence at op {} ({})\n# A:\n", d.index, d.kind);
    for l in &d.a {
        txt += &format!("#   {l}\n");
    }
    txt += "# B:\n";
    for l in &d.b {
        txt += &format!("#   {l}\n");
    }
    let _ = std::fs::write(path.with_extension("txt"), txt);
}

#[allow(clippy::too_many_arguments)]
fn cmd_run(
    a: &str,
    b: &str,
    seed: u64,
    count: Option<u64>,
    duration: Option<Duration>,
    gcfg: GenConfig,
    allowlist: Option<PathBuf>,
    out: PathBuf,
    no_shrink: bool,
    cfg: ExecConfig,
) -> Result<bool, String> {
    let (ua, ub) = (parse_url(a)?, parse_url(b)?);
    let allow = match &allowlist {
        Some(p) => AllowList::parse(
            &std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )?,
        None => AllowList::default(),
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let count = count.unwrap_or(if duration.is_some() { u64::MAX } else { 100 });
    let t0 = Instant::now();
    let mut last_progress = t0;
    let (mut runs, mut ops_run, mut clean, mut allowed, mut flaky) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut found: HashMap<String, (usize, u64, PathBuf)> = HashMap::new();
    let mut allowed_by: HashMap<String, u64> = HashMap::new();
    let mut flaky_by: HashMap<String, u64> = HashMap::new();
    for i in 0..count {
        if duration.is_some_and(|d| t0.elapsed() >= d) {
            break;
        }
        let s = seed + i;
        let steps = generate(s, &gcfg);
        let (ta, tb) = run_both(&ua, &ub, &steps, &cfg);
        runs += 1;
        let d = compare(&steps, &ta.steps, &tb.steps);
        ops_run += d
            .as_ref()
            .map(|d| d.index as u64 + 1)
            .unwrap_or(steps.len() as u64);
        if last_progress.elapsed() >= Duration::from_secs(30) {
            last_progress = Instant::now();
            eprintln!(
                "[{:>5.0?}] {runs} sequences, {ops_run} ops: {clean} same, {allowed} allowed, {flaky} timing-dependent, {} distinct divergences",
                t0.elapsed(),
                found.len()
            );
        }
        let Some(d) = d else {
            clean += 1;
            continue;
        };
        if let Some(reason) = allow.allows(&d) {
            allowed += 1;
            *allowed_by.entry(reason.to_string()).or_default() += 1;
            continue;
        }
        let class = d.class();
        if let Some(f) = found.get_mut(&class) {
            f.1 += 1;
            continue;
        }
        // A divergence must show again on a second run of both brokers, in the same class, with
        // four times the settle time; otherwise it depends on timing.
        let slow = ExecConfig {
            settle: cfg.settle * 4,
            ..cfg.clone()
        };
        match diverge(&ua, &ub, &steps, &slow) {
            Some(d2) if d2.class() == class => {}
            _ => {
                flaky += 1;
                *flaky_by.entry(class.clone()).or_default() += 1;
                eprintln!(
                    "seed {s}: divergence at op {} did not repeat (timing): {}",
                    d.index,
                    d.signature()
                );
                continue;
            }
        }
        let n = found.len() + 1;
        eprintln!("seed {s}: DIVERGENCE #{n}: {}", d.signature());
        print_divergence(&d);
        let path = out.join(format!("div-{n:03}-seed{s}.json"));
        let (min, md) = if no_shrink {
            (steps.clone(), d.clone())
        } else {
            shrink_divergence(&ua, &ub, &steps, &d, &cfg)
        };
        write_repro(&path, Some(s), &min, &md);
        eprintln!(
            "  minimal reproduction ({} ops), {}:",
            min.len(),
            path.display()
        );
        for l in listing(&min).lines() {
            eprintln!("    {l}");
        }
        print_divergence(&md);
        found.insert(class, (n, 1, path));
    }
    eprintln!(
        "done in {:.0?}: {runs} sequences, {ops_run} ops: {clean} same, {allowed} allowed, {flaky} timing-dependent, {} distinct divergences",
        t0.elapsed(),
        found.len()
    );
    for (reason, n) in &allowed_by {
        eprintln!("  allowed x{n}: {reason}");
    }
    for (class, n) in &flaky_by {
        eprintln!("  timing-dependent x{n}: {class}");
    }
    let mut list: Vec<_> = found.iter().collect();
    list.sort_by_key(|(_, v)| v.0);
    for (class, (n, times, path)) in &list {
        eprintln!("  #{n} x{times} {} : {class}", path.display());
    }
    Ok(found.is_empty())
}

fn cmd_replay(
    file: &Path,
    a: &str,
    b: Option<&str>,
    do_shrink: bool,
    cfg: ExecConfig,
) -> Result<bool, String> {
    let steps = load_steps(file)?;
    let ua = parse_url(a)?;
    let Some(b) = b else {
        let t = execute(&ua, &steps, &cfg);
        for (i, lines) in t.steps.iter().enumerate() {
            match steps.get(i) {
                Some(s) => println!("{i:3}  {s}"),
                None => println!("---  final probe"),
            }
            for l in lines {
                println!("       {l}");
            }
        }
        return Ok(true);
    };
    let ub = parse_url(b)?;
    let (ta, tb) = run_both(&ua, &ub, &steps, &cfg);
    let d = compare(&steps, &ta.steps, &tb.steps);
    for (i, (la, lb)) in ta.steps.iter().zip(&tb.steps).enumerate() {
        let mark = if la == lb { " " } else { "!" };
        match steps.get(i) {
            Some(s) => println!("{mark}{i:3}  {s}"),
            None => println!("{mark}---  final probe"),
        }
        if la == lb {
            for l in la {
                println!("        {l}");
            }
        } else {
            for l in la {
                println!("      A {l}");
            }
            for l in lb {
                println!("      B {l}");
            }
        }
    }
    match d {
        None => {
            println!("no divergence");
            Ok(true)
        }
        Some(d) => {
            println!("first divergence at op {}: {}", d.index, d.signature());
            if do_shrink {
                let (min, md) = shrink_divergence(&ua, &ub, &steps, &d, &cfg);
                let path = file.with_extension("min.json");
                write_repro(&path, None, &min, &md);
                println!(
                    "minimal reproduction ({} ops) in {}:",
                    min.len(),
                    path.display()
                );
                print!("{}", listing(&min));
            }
            Ok(false)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run {
            a,
            b,
            seed,
            count,
            duration,
            ops,
            conns,
            exclude,
            allowlist,
            out,
            no_shrink,
            timing,
        } => {
            let gcfg = GenConfig {
                ops,
                conns,
                exclude,
                ..Default::default()
            };
            cmd_run(
                &a,
                &b,
                seed,
                count,
                duration,
                gcfg,
                allowlist,
                out,
                no_shrink,
                timing.config(),
            )
        }
        Cmd::Replay {
            file,
            a,
            b,
            shrink,
            timing,
        } => cmd_replay(&file, &a, b.as_deref(), shrink, timing.config()),
        Cmd::Gen {
            seed,
            ops,
            conns,
            json,
        } => {
            let steps = generate(
                seed,
                &GenConfig {
                    ops,
                    conns,
                    ..Default::default()
                },
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&steps).unwrap());
            } else {
                print!("{}", listing(&steps));
            }
            Ok(true)
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("amqp-diff: {e}");
            ExitCode::from(2)
        }
    }
}
