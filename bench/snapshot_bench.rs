//! Working snapshot create + delete, through the library API (no process start,
//! no config parse): `cargo run --release --example snapshot-bench -- FARM_TOML MACHINE [N]`.
use std::time::Instant;

use reconcile::config;
use reconcile::store::working::WorkingSnapshot;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let desired = config::load(std::path::Path::new(&args[1])).unwrap_or_else(|e| panic!("{e}"));
    let machine = &args[2];
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100);
    let m = &desired.model.machine[machine];
    let volume = &desired.model.volume[&m.volume];
    let toolchain = m.toolchain.keys().next().map(String::as_str);
    let state = reconcile::state::StateDir::create(&desired.state_dir).unwrap();
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let w = WorkingSnapshot::create(&state, volume, machine, m.kind, toolchain, None).unwrap();
        w.delete().unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{:.2} {:.2} {:.2}", ms[n / 2], ms[n * 95 / 100], ms[n - 1]);
}
