fn main() {
    let a: Vec<String> = std::env::args().collect();
    let idx = ktrace_symbols::SymbolIndex::from_path(&a[1]).unwrap();
    let r = ktrace_symbols::params::ParamReader::from_path(&a[1]).unwrap();
    let res = idx.resolve(&a[2], Default::default()).unwrap();
    let p = &res.points[0];
    println!("{:#x} {:?}", p.addr, p.function);
    let t = std::time::Instant::now();
    println!("{:?}", r.parameters(p.addr - p.offset));
    for path in &a[3..] {
        let parts: Vec<&str> = path.split('.').collect();
        println!("{path}: {:?}", r.access(p.addr - p.offset, p.addr, &parts));
    }
    println!("{:?}", t.elapsed());
}
