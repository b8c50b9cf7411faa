/// mimalloc: a no-op plan of a large farm allocates and frees tens of
/// thousands of small strings across threads; glibc's per-thread arenas
/// spent a fifth of its user time there (docs/performance.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(reconcile::cli::main());
}
