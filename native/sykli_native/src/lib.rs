mod nif;

rustler::init!("Elixir.SykliK8s.Native", load = nif::load);
