mod nif;

rustler::init!("Elixir.Sykli.Native", load = nif::load);
