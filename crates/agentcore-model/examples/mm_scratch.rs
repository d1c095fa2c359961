#![expect(clippy::print_stdout, reason = "scratch")]
use candle_core::{Device, Tensor};
use std::time::Instant;
fn time(name: &str, flops: f64, f: impl Fn()) {
    for _ in 0..5 {
        f();
    }
    let mut ts = vec![];
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..20 {
            f();
        }
        ts.push(t.elapsed().as_secs_f64() / 20.0);
    }
    ts.sort_by(f64::total_cmp);
    let med = ts[3];
    println!("{name}: {:.0} us  {:.1} GFLOP/s", med * 1e6, flops / med / 1e9);
}
fn main() {
    let r = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &Device::Cpu).unwrap();
    for (m, k, n) in [(1024, 256, 256), (1024, 256, 768), (1024, 768, 256), (1024, 256, 512)] {
        let x = r(&[m, k]);
        let w = r(&[n, k]);
        let dy = r(&[m, n]);
        let fl = 2.0 * (m * k * n) as f64;
        time(&format!("x.W^T {m}x{k}x{n}"), fl, || {
            x.matmul(&w.t().unwrap()).unwrap();
        });
        time(&format!("dy.W {m}x{n}x{k}"), fl, || {
            dy.matmul(&w).unwrap();
        });
        time(&format!("dy^T.x {n}x{m}x{k}"), fl, || {
            dy.t().unwrap().matmul(&x).unwrap();
        });
    }
    let q = r(&[16, 4, 64, 64]);
    let k = r(&[16, 4, 64, 64]);
    let fl = 2.0 * (64 * 64 * 64 * 64) as f64;
    time("attn q.k^T b64", fl, || {
        q.matmul(&k.t().unwrap()).unwrap();
    });
    time("attn a.v b64", fl, || {
        q.matmul(&k).unwrap();
    });
    let a = r(&[1024, 768]);
    let b = r(&[1024, 768]);
    time("mul 1024x768", 1024.0 * 768.0, || {
        (&a * &b).unwrap();
    });
    time("add 1024x768", 1024.0 * 768.0, || {
        (&a + &b).unwrap();
    });
    let x = r(&[16, 64, 4, 64]);
    time("transpose+contig 16x64x4x64", 262144.0, || {
        x.transpose(1, 2).unwrap().contiguous().unwrap();
    });
}
