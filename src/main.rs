fn main() {
    std::process::exit(reconcile::cli::main());
}
