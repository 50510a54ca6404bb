pub mod campaign;
pub mod cleanup;
pub mod ctl;
pub mod daemon;
pub mod run;
