import numpy as np
import pytest
from scipy import stats

from ml.analysis.excess_risk import ErrorAnalysisConfig, bayes_classifier, excess_risk
from ml.config import DatasetConfig, TrainingConfig
from ml.data import load_dataset


def test_bayes_rule_of_the_synthetic_classes_matches_scipy():
    cfg = DatasetConfig(name="gaussian", image_size=8, mean=[-0.2, 0.3], std=[1.5, 2.0], n_val=500)
    data = load_dataset(cfg)
    x = data.x_val.flatten(1).double().numpy()
    log0 = stats.multivariate_normal(np.full(64, -0.2), np.eye(64) * 1.5**2).logpdf(x)
    log1 = stats.multivariate_normal(np.full(64, 0.3), np.eye(64) * 2.0**2).logpdf(x)
    np.testing.assert_array_equal(bayes_classifier(cfg).predict(x), (log1 >= log0).astype(int))


def test_decomposition_adds_up_for_every_model_and_repeat():
    cfg = ErrorAnalysisConfig(
        models=["vgg", "vae-svm", "vae-kmeans"],
        dataset=DatasetConfig(name="gaussian", image_size=32, mean=[-0.1, 0.1], std=[1.0, 1.0]),
        training=TrainingConfig(epochs=2, batch_size=32, width=0.0625, head_epochs=3),
        n_train=10, n_eval=100, repeats=2,
    )
    seen = []
    report = excess_risk(cfg, device="cpu", on_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6)
    assert [m["model"] for m in report["models"]] == cfg.models
    # Delta = 0.2 * 32 = 6.4: the Bayes risk is Phi(-3.2).
    assert report["bayes"]["risk"] == pytest.approx(stats.norm.cdf(-3.2), rel=1e-6)
    for m in report["models"]:
        assert m["repeats"] == 2 and m["parameter_count"] > 0
        for run in m["runs"]:
            assert run["ee"] + run["ae"] == pytest.approx(run["risk_hat"] - run["risk_star"])
            assert 0 <= run["risk_hat"] <= 1 and 0 <= run["risk_bar"] <= 1
        assert m["ee_mean"] == pytest.approx(np.mean([r["ee"] for r in m["runs"]]))


def test_error_analysis_refuses_what_has_no_bayes_rule():
    with pytest.raises(ValueError, match="gaussian"):
        ErrorAnalysisConfig(dataset=DatasetConfig(name="mnist"))
    with pytest.raises(ValueError, match="subset"):
        ErrorAnalysisConfig(models=["unet-pretrained"])
