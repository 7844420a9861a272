//! `pki-bench`: the DESIGN.md §9 figures, measured side by side with the tools people use
//! today, on loopback, bounded in time. Driven by `scripts/bench/run.sh`, which builds the
//! release binaries, installs the peers (`wrk`, `hyperfine`) and assembles `docs/benchmarks.md`
//! from the sections each subcommand writes.
//!
//! Subcommands (each writes one markdown section to `--out`):
//! - `redemption`: RedeemTicket rate and latency vs the openssl CLI pipeline and the crypto floor;
//! - `ocsp`: OCSP over HTTP keep-alive (wrk) vs `openssl ocsp` and a bare HTTP server, and
//!   OCSP p99 while redemptions saturate the cores;
//! - `crl`: CRL build + sign for 10k/100k/1M entries vs `openssl ca -gencrl`, time and peak RSS;
//! - `reach`: revoke → the example gateway refuses the certificate;
//! - `scale`: redemption rate and restart time with a small and a large store;
//! - `footprint`: disk per certificate, memory under load with a large store, backup size and time;
//! - `cluster`: several daemons on one PostgreSQL, beside sled: redemption, reach, CRL, restart.
//!
//! Helpers used by those: `bare-http` (the bare HTTP peer), `crl-child` (one CRL build in its
//! own process, for its peak RSS), `crl-index` (the same entries as an openssl `index.txt`).
#![forbid(unsafe_code)]

mod cluster;
mod common;
mod crl;
mod error;
mod footprint;
mod ocsp;
mod reach;
mod redemption;
mod scale;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::{BenchError, Result, io};

/// Full run (the numbers in docs/benchmarks.md) or a seconds-long smoke run (CI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The real measurement.
    Full,
    /// A very short run of every step, so the benchmarks cannot rot.
    Smoke,
}

/// One benchmark's part of the report.
#[derive(Debug)]
pub struct Section {
    /// File stem of the result (`results/<name>.md`).
    pub name: &'static str,
    /// Heading.
    pub title: &'static str,
    /// Markdown body.
    pub body: String,
    /// Whether every §9 target checked in it was met.
    pub targets_met: bool,
}

#[derive(Debug, Parser)]
#[command(
    name = "pki-bench",
    about = "ca-daemon benchmarks beside openssl / wrk peers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// full or smoke.
    #[arg(long, value_enum, default_value = "full")]
    mode: Mode,
    /// Where to write the markdown section.
    #[arg(long)]
    out: PathBuf,
    /// Scratch directory (removed afterwards) [default: a temp dir].
    #[arg(long)]
    work: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Benchmark 1: redemption vs openssl pipeline vs crypto floor.
    Redemption(BenchArgs),
    /// Benchmark 2: OCSP vs openssl ocsp vs bare HTTP, and under redemption load.
    Ocsp(BenchArgs),
    /// Benchmark 3: CRL build + sign vs openssl ca -gencrl.
    Crl(BenchArgs),
    /// Benchmark 4: revocation → gateway rejects.
    Reach(BenchArgs),
    /// Benchmark 5: small vs large store.
    Scale(BenchArgs),
    /// Benchmark 6: footprint (disk, memory, backup) with a large store.
    Footprint(BenchArgs),
    /// Benchmark 7: several daemons on one PostgreSQL beside sled (issue #15).
    Cluster(BenchArgs),
    /// Helper: a bare HTTP server answering every request with a fixed body.
    BareHttp {
        /// Listen address.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Body size in bytes.
        #[arg(long)]
        size: usize,
    },
    /// Helper: builds one CRL of `n` entries in this process and prints JSON (secs, VmHWM).
    CrlChild {
        /// Data dir of a dev PKI (its active issuer signs).
        #[arg(long)]
        data_dir: PathBuf,
        /// Entries.
        #[arg(long)]
        n: usize,
        /// Where to write the DER.
        #[arg(long)]
        der_out: PathBuf,
    },
    /// Helper (investigation): a dev data dir at `data_dir` with `n` seeded certificates, as
    /// the footprint benchmark makes it, left in place for measuring the daemon by hand.
    Seed {
        /// Data dir to create (must not hold a store yet).
        #[arg(long)]
        data_dir: PathBuf,
        /// Certificates.
        #[arg(long)]
        n: usize,
    },
    /// Helper: writes the same `n` entries as an openssl `index.txt`.
    CrlIndex {
        /// Entries.
        #[arg(long)]
        n: usize,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::BareHttp { listen, size } => ocsp::bare_http(listen, size),
        Cmd::CrlChild {
            data_dir,
            n,
            der_out,
        } => crl::child(&data_dir, n, &der_out),
        Cmd::CrlIndex { n, out } => crl::write_index(n, &out),
        Cmd::Seed { data_dir, n } => footprint::seed_only(&data_dir, n),
        Cmd::Redemption(a) => bench(a, |m, w| Box::pin(redemption::run(m, w))),
        Cmd::Ocsp(a) => bench(a, |m, w| Box::pin(ocsp::run(m, w))),
        Cmd::Crl(a) => bench(a, |m, w| Box::pin(crl::run(m, w))),
        Cmd::Reach(a) => bench(a, |m, w| Box::pin(reach::run(m, w))),
        Cmd::Scale(a) => bench(a, |m, w| Box::pin(scale::run(m, w))),
        Cmd::Footprint(a) => bench(a, |m, w| Box::pin(footprint::run(m, w))),
        Cmd::Cluster(a) => bench(a, |m, w| Box::pin(cluster::run(m, w))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pki-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type BenchFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Section>> + 'a>>;

fn bench(
    a: BenchArgs,
    f: impl for<'a> FnOnce(Mode, &'a std::path::Path) -> BenchFuture<'a>,
) -> Result<()> {
    let temp;
    let work = match a.work {
        Some(w) => {
            std::fs::create_dir_all(&w).map_err(io("create work dir"))?;
            w
        }
        None => {
            temp = tempfile::tempdir().map_err(io("work dir"))?;
            temp.path().to_path_buf()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common::cores())
        .enable_all()
        .build()
        .map_err(io("tokio runtime"))?;
    let section = rt.block_on(f(a.mode, &work))?;
    let mut text = format!("## {}\n\n", section.title);
    if a.mode == Mode::Smoke {
        text.push_str("_Smoke run: a few operations per step; the numbers mean nothing._\n\n");
    }
    text.push_str(&section.body);
    text.push('\n');
    std::fs::write(&a.out, &text).map_err(io(format!("write {}", a.out.display())))?;
    println!("{text}");
    if !section.targets_met {
        eprintln!(
            "pki-bench {}: some DESIGN.md §9 targets were missed (see the report)",
            section.name
        );
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    if section.body.is_empty() {
        return Err(BenchError::Failed("empty section".into()));
    }
    Ok(())
}
