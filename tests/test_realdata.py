"""One real-data smoke run on a few thousand images of the shared copy."""

import cifarlab


def test_one_epoch_real_data(real_data_dir, tmp_path):
    data = cifarlab.load_data(real_data_dir)
    assert len(data.train) == 50_000 and len(data.test) == 10_000
    m = cifarlab.train("default", data=data, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, epochs=1, train_subset=4000, test_subset=2000,
                       batch_size=64, lr=0.05)
    assert m["test_acc"] > 0.2  # chance is 0.1
