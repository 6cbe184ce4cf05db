//! Rebuilds the crate when a migration is added, changed or removed: the migrations are
//! embedded in it (`embed_migrations!`), and cargo does not see new folders by itself.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
