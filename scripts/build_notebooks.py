"""Write the numbered notebooks from the cell lists below (then execute them to store outputs).

    python scripts/build_notebooks.py            # write sources (or name some: ... 07)
    jupyter nbconvert --to notebook --execute --inplace notebooks/0*.ipynb
    python scripts/build_notebooks.py --strip    # then drop the widget state nbconvert stores

Editing a notebook in JupyterLab is fine too; this script is how they were first written.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SETUP = """%load_ext autoreload
%autoreload 2
import anomaly
from anomaly import notebook as nb
S = nb.settings()  # smoke run when ANOMALY_SMOKE is set (make test), full settings otherwise
anomaly.seed_everything(S.seed)"""

CHECK = "# NBVAL_CHECK_OUTPUT\n"

NOTEBOOKS = {
    "01_data_exploration": [
        "# 01 Data exploration: handmade cookies, and why this is not easy\n\n"
        "The original project photographed 31 cat-shaped cookies (24 normal, 7 defective). We "
        "generate a set like it on demand, with a pixel-exact mask for every defect.",
        SETUP,
        "The toy set has the original's counts. The table below is compared by nbval: the "
        "generator is deterministic.",
        CHECK + "toy = nb.ensure_cookies(S, preset='toy', size=256)\nprint(nb.counts_table(toy))",
        "## Two of each kind\nGreen outlines are the ground-truth masks: a broken "
        "cookie, mustard, plastic wrap.",
        "test = anomaly.AnomalyDataset(toy, 'test', size=256, channels=3)\nnb.kinds_figure(test)",
        "## Normal cookies are not identical\nPosition, rotation, chocolate pieces, baking colour, "
        "tiny hairline cracks and lighting all vary, and none of them is a defect. A detector "
        "must learn this variation from good images alone.",
        "train = anomaly.AnomalyDataset(toy, 'train', size=256, channels=3)\nnb.normals_figure(train)",
        "## How large are the defects?\nSome cover a few percent of the image, some well under "
        "one percent: the small ones are what separates methods (notebook 06).",
        "nb.defect_area_figure(toy)",
        "## Intensity statistics\nMean brightness barely moves with a defect: no global statistic "
        "finds them, the detector has to look at local structure.",
        CHECK + "print(nb.intensity_table(test))",
        "nb.intensity_figure(test)",
    ],
    "02_train_autoencoder": [
        "# 02 Train an auto-encoder and a UNet on normal cookies\n\n"
        "Both learn to reconstruct defect-free images; notebook 03 looks at where they fail. "
        "Runs land in `runs/`: with the default settings the notebooks reuse the runs `make "
        "benchmark` wrote in `runs/benchmark`, and train what is missing in `runs/notebooks`.",
        SETUP,
        "# NBVAL_IGNORE_OUTPUT\ndata = nb.ensure_cookies(S)\n"
        "print(nb.shown(anomaly.AnomalyDataset(data, 'train', size=128, channels=1)))",
        "Training shows a progress bar (terminal and JupyterLab), keeps the best checkpoint by "
        "validation loss and stops early when it stops improving. The UNet trains as the "
        "original did (grayscale, L2). The AE's defaults are stronger: RGB, SSIM loss, and "
        "denoising training (half of the training images get a synthetic anomaly that the AE "
        "must remove, so it learns to replace what is not normal instead of copying it).",
        "# NBVAL_IGNORE_OUTPUT\nae = nb.ensure_run(S, 'ae', data)\nunet = nb.ensure_run(S, 'unet', data)",
        "A run folder holds everything needed to reproduce or rescore it:",
        CHECK + "sorted(p.name for p in unet.iterdir() if p.is_file() and p.name[0] != '.')",
        "## Loss curves\nTraining and validation loss per epoch (`history.csv`), each run on its "
        "own axis: the AE's loss is SSIM-based, the UNet's L2.",
        "from anomaly.viz import plot_histories\n"
        "plot_histories({'ae': ae / 'history.csv', 'unet': unet / 'history.csv'})",
        "## Reconstructions beside inputs\nThe AE was trained to remove anomalies, and paints "
        "the defects over with cookie. The UNet leaves visible traces of mustard, plastic and cracks in "
        "its output, yet its error inside a defect stays many times its error elsewhere "
        "(notebook 03 measures the ratio): copying defects through is not what holds it back.",
        "nb.reconstructions_figure({'ae': ae, 'unet': unet})",
        "## How well do they separate defective from normal cookies?",
        "# NBVAL_IGNORE_OUTPUT\nprint(nb.metrics_table({'ae': ae, 'unet': unet}))",
    ],
    "03_difference_maps": [
        "# 03 Difference maps\n\nWhere the reconstruction fails, the difference marks the "
        "defect. First the original project's picture, made by its own recipe (`--recipe "
        "original`: its 64-wide grayscale UNet, MSE, Adam 1e-3, batch 8, here at 128 px for 5 "
        "epochs where the original trained at 512 px for 1000 on a GPU), next to this "
        "project's map; then the choices that turn a map into one score per image.",
        SETUP,
        "# NBVAL_IGNORE_OUTPUT\ndata = nb.ensure_cookies(S)\n"
        "ae, unet = nb.ensure_run(S, 'ae', data), nb.ensure_run(S, 'unet', data)\n"
        "from anomaly import original\norig = original.original_runs(S, data)['unet_original']",
        "## The original's red overlay next to the project's map\nLeft the input (true defect "
        "in green), middle the original's overlay of its own UNet, right the project's UNet "
        "evidence on one scale for the whole run, anchored to its pixel threshold. The original paints red only where "
        "the reconstruction is brighter than the input (by more than 1/255): a defect brighter "
        "than the cookie, like the glare on plastic wrap, is not marked. The project's UNet "
        "(colour bar: its scale) marks some defects strongly and others hardly at all, and "
        "lights up the image corners on every cookie: its reconstruction fails at the border, "
        "which is why one of the image scores below leaves a frame out. Red only on images it "
        "rejects (the panels carry no verdict).",
        "original.overlay_comparison_figure(orig, unet)",
        "How well each map finds the defect pixels (original recipe's UNet): the signed "
        "overlay, the squared error, and the squared error smoothed as the project does.",
        "# NBVAL_IGNORE_OUTPUT\nprint(original.map_choices_table(orig))",
        "## The AE's evidence, as `score` draws it\nOne scale for the whole run, anchored to its "
        "pixel threshold (yellow: raised, red: above it on an image that is rejected), so a "
        "good cookie that passes shows no red instead of being stretched to red; the verdict and score are written on each image.",
        "nb.evidence_figure(ae)",
        "## One map, several image scores\nThe project's UNet, its error map turned into one "
        "number per image five ways: the per-image MSE (the original's loss), the mean "
        "absolute error, the maximum of the smoothed map, that maximum with an 8-pixel frame "
        "left out, and the mean of the top 1 %. One ROC curve per choice:",
        "original.score_choices_figure(unet)",
        "# NBVAL_IGNORE_OUTPUT\nprint(original.score_choices_table(unet))",
        "The columns of the comparison (compared by nbval):",
        CHECK + "original.score_choices_table(unet).splitlines()[0]",
        "The same for the original recipe's UNet:",
        "# NBVAL_IGNORE_OUTPUT\nprint(original.score_choices_table(orig))",
        "## L2 versus SSIM\nThe same reconstructions scored two ways: L2 reacts to intensity "
        "differences, SSIM to changes of local structure (edges, texture). Each row has its "
        "own scale, 0 to its largest value (the bars on the right): compare the shapes within "
        "a row, not the heat of one row with the other's.",
        "nb.l2_vs_ssim_figure(ae)",
        "## Does the UNet copy defects through?\nIts skip connections carry the input's details "
        "to the output, so it could reproduce a defect. Measured: the reconstruction error "
        "inside the defect relative to the error elsewhere on the same images. A ratio well "
        "above 1 means the defect is not copied; the UNet's weakness was its training and its "
        "score, not copying (README).",
        "# NBVAL_IGNORE_OUTPUT\nprint(nb.copy_through_table({'ae': ae, 'unet': unet, "
        "'unet_original': orig}))",
        "The UNet's evidence as `score` draws it. Its verdicts come from its image score (the "
        "per-image MSE), not from the red: a REJECT may show little red on its defect, and "
        "the corners light up on good cookies too.",
        "nb.evidence_figure(unet)",
    ],
    "04_kmeans_scoring": [
        "# 04 k-means on learned features, honest metrics, a threshold by rule\n\n"
        "The original project's second method: k-means (k = 2) on its UNet's bottleneck, "
        "max-pooled and flattened; a cookie's score is its distance to the nearest centroid, "
        "and a threshold of 0.02 chosen by eye separates them. Here it is as the original did "
        "it (`--recipe original`), next to the project's k-means: one k-means per position of "
        "the UNet encoder's maps at 1/2 and 1/4 of the image size, standardised, k chosen by "
        "a silhouette rule, so it also gives a map.",
        SETUP,
        "# NBVAL_IGNORE_OUTPUT\ndata = nb.ensure_cookies(S)\n"
        "runs = {m: nb.ensure_run(S, m, data) for m in ('ae', 'unet', 'vae')}\n"
        "runs['unet+kmeans'] = nb.ensure_run(S, 'kmeans', source='unet')\n"
        "runs.update({m: nb.ensure_run(S, m, data) for m in ('patchknn', 'flow')})\n"
        "from anomaly import original\nruns.update(original.original_runs(S, data))",
        "## The distance table, as the original printed it\nNormal cookies first, then the "
        "defective ones (`scores.csv` of the original recipe's k-means).",
        "# NBVAL_IGNORE_OUTPUT\nprint(nb.scores_table(runs['unet_original+kmeans']))",
        "## What the fixed 0.02 does here\nThe original chose 0.02 by eye on its own test "
        "photos. A distance between flattened feature vectors grows with their length (the "
        "image size) and moves with training, so on this data the same number flags a "
        "different fraction of cookies. Beside it, thresholds by rule: the 99th percentile "
        "of held-out normal scores (`val_scores.json`, as `train` saved them), and the "
        "F1-optimal one, which needs labelled defects and is chosen on these same test images: "
        "its rates here are in-sample, better than it will do on new parts.",
        "# NBVAL_IGNORE_OUTPUT\n"
        "print(original.fixed_threshold_table(\n"
        "    {k: runs[k] for k in ('unet_original+kmeans', 'unet+kmeans')}\n))",
        "## Score histograms and the threshold\nThe project's k-means, with its threshold by rule.",
        "nb.histogram_figure(runs['unet+kmeans'])",
        "## ROC curves and the metrics table\nImage AUROC, AP and F1-max; pixel AUROC and AUPRO "
        "(up to 30% false-positive rate) as MVTec AD defines them.",
        "nb.roc_figure(runs)",
        "# NBVAL_IGNORE_OUTPUT\nprint(nb.metrics_table(runs))",
        "Every metric exists for every method (compared by nbval):",
        CHECK + "sorted(nb.metrics_table_keys(runs))",
        "## A threshold by another rule\nF1-optimal needs labelled defects, and it is chosen on "
        "the scored test images themselves: the rates it gets there are in-sample (the table "
        "above shows how many good cookies it flags). The rule is saved, and `predict` uses it "
        "and says so.",
        "km = nb.own_copy(S, runs['unet+kmeans'])  # the benchmark's run keeps its threshold\n"
        "t = anomaly.set_threshold(km, 'f1')\nprint(f'{t.value:.4g} ({t.rule})')",
        "What was saved and what `predict` will report (compared by nbval):",
        CHECK + "t.rule, sorted(t.params), sorted(p.name for p in km.glob('*.json'))",
    ],
    "05_threshold_explorer": [
        "# 05 Threshold explorer\n\nChoosing the threshold is the decision a QA team must "
        "defend. Move the slider: verdicts (PASS / REJECT), the confusion matrix, false-reject "
        "and escape rates follow at once. Give the cost of a false reject and of an escape to get "
        "the cost-optimal threshold (and how it does on images it was not chosen on), see which "
        "rule set the saved threshold and what it guarantees, and save the one you choose into "
        "the run folder, where `predict` uses it. The same page runs without a notebook: "
        "`python -m anomaly explore --run RUN`.",
        SETUP,
        "# NBVAL_IGNORE_OUTPUT\ndata = nb.ensure_cookies(S)\n"
        "runs = [nb.ensure_run(S, m, data) for m in nb.explorer_methods(S)]\n"
        "runs = [nb.own_copy(S, r) for r in runs]  # saved thresholds go here, not in the benchmark's\n"
        "explorer = anomaly.ThresholdExplorer(runs)",
        "## The explorer at its starting threshold\nA picture of its state (what a reader of "
        "this page on the web sees; the live explorer is the next cell when you run the "
        "notebook): the score histograms with the threshold, the saved rule and the cost "
        "optimum, the counts, and the most wrong images with their evidence overlays (red: "
        "above the pixel threshold on a rejected image; green outline: the true defect).",
        "explorer.snapshot()",
        "## The same pictures everywhere\nThe overlays `score` writes to `RUN/overlays/` (and "
        "`predict` writes, and the explorer shows): the verdict and score on the image, the "
        "evidence on one scale anchored to the run's pixel threshold (yellow: raised, red: above "
        "it on a rejected image, so a part that passes shows no red), the true defect outlined in green, the colour bar.",
        "nb.evidence_figure(runs[0])",
        "## The live explorer\nRun the notebook to use it: move the thresholds, page through "
        "the mistakes, filter by defect kind, enlarge a tile, compare the two runs, export a "
        "report.",
        "explorer",
        "The explorer's state can be driven from code too, e.g. jump to the cost optimum when an "
        "escape costs 20 false rejects:",
        "# NBVAL_IGNORE_OUTPUT\nexplorer.cost_escape.value = 20.0\nexplorer.optimum_button.click()\n"
        "explorer.snapshot()",
        "A report to hand on, one HTML file that opens in any browser without Python "
        "(threshold, rule, confusion matrix, rates, histogram, every misclassified image, run "
        "and data identity):",
        "# NBVAL_IGNORE_OUTPUT\nprint(nb.shown(explorer.export_report(S.own_runs / 'report_05.html')))",
    ],
    "06_benchmark": [
        "# 06 Benchmark: which method to trust, what it costs, and how many good images it needs\n\n"
        "Every method on the same split with the same seed, at its default settings, on the "
        "cookies and on the real-photo suite (`make-photos`). `unet+kmeans` is the project's "
        "k-means on its UNet's encoder maps, `unet_original+kmeans` the original project's own "
        "recipe (its 64-wide UNet, k-means on the bottleneck; at 128 px for 5 epochs, where the "
        "original trained at 512 px for 1000 on a GPU). Made by "
        "`make benchmark`: `python -m anomaly benchmark --data data/cookies --out "
        "runs/benchmark`, then the feature methods on the photo suite into "
        "`runs/benchmark-photos`; each writes its measurement log (`docs/benchmark-notes*.md`: "
        "machine, date, load, command).",
        SETUP,
        "## Every method on the cookies\nOne row per method, with image AUROC per defect kind.",
        "# NBVAL_IGNORE_OUTPUT\nresult = nb.benchmark_result(S)\nprint(result['table'])",
        "## The feature methods on the real-photo suite\nOne row per set and method; below it the "
        "mean and the worst set. Read the worst set: a default that wins on one set and loses "
        "on another is not a default.",
        "# NBVAL_IGNORE_OUTPUT\nphotos = nb.photos_result(S)\nprint(photos['table'])\n"
        "print(photos['summary_table'])",
        "The columns of the suite summary (compared by nbval):",
        CHECK + "photos['summary_table'].splitlines()[0]",
        "## Detectability: how small a defect each method finds\nThe fraction of defects caught "
        "when 5% of good images are rejected, by defect area, on the first set (the cookies).",
        "nb.detectability_figure(result)",
        "## How many good images do I need?\nEach method is trained on 1, 2, 4, ... 128 and all "
        "good training images (`unet+kmeans` from 2, and on 24 too; three random subsets for "
        "n <= 64 for `patchknn`, n <= 8 for `unet+kmeans`: `--seeds-up-to`), always against "
        "the same "
        "held-out good images and test set. The right panel is what a QA team lives with, at "
        "the conformal threshold set on the held-out good images (alpha = 1 %, or 1/(n_cal + 1) "
        "when too few are held out for 1 %: the table says which): the fraction of defective "
        "parts that pass (solid; shaded: the range over subsets) and of good ones rejected "
        "(dashed). Its guarantee, at most alpha false rejects, holds for good parts like the "
        "held-out ones. The cookies' test images are, and their false rejects stay near alpha. "
        "The photo sets' are not: their test crops come from another region of the photo than "
        "the training and held-out crops, so the threshold, set on crops that overlap the "
        "training ones, rejects most good test crops, more as n grows (the table's false "
        "rejects). Their low escape rates are bought that way; notebook 07 sets a threshold "
        "on good photos from the line instead.",
        "# NBVAL_IGNORE_OUTPUT\ncurves = nb.train_size_rows(S)\nprint(nb.train_size_table(curves))",
        "Cookies (`patchknn` and `unet+kmeans`, which is also trained on n = 24, the original "
        "project's count of normal images, training and test together) and two real-photo sets: a stochastic texture "
        "(moon) and a regular pattern (a printed page). Here `unet+kmeans` clusters with k = 2 at "
        "every n, where the benchmark's run chooses k by its silhouette rule, and the fit seconds "
        "time the detector's fit alone (`unet+kmeans`: training its UNet, then k-means), where "
        "the tables' `fit_s` time the whole `train` command (`unet+kmeans`'s: k-means alone, on "
        "a UNet trained before):",
        "nb.train_size_figure(curves)",
    ],
    "07_bring_your_own_photos": [
        "# 07 Bring your own photos\n\n"
        "From a folder of your own photos to PASS / REJECT on new ones: the layout the loader "
        "reads and what it checks, a label-free `--method auto` run, a threshold with a "
        "guarantee and the good photos to set it on, the verdicts on a folder of new photos, "
        "and where to look when it does poorly. The loader (`anomaly.AnomalyDataset`) reads the MVTec AD layout\n\n"
        "    my-photos/train/good/             good photos to learn from (dozens: a quarter "
        "are held out below, and a 5 % guarantee needs 19 held out)\n"
        "    my-photos/test/good/              good photos to test it on (optional)\n"
        "    my-photos/test/<kind>/            defective photos, a folder per kind (optional)\n"
        "    my-photos/ground_truth/<kind>/    <stem>_mask.png, white = defect (optional)\n\n"
        "or the plain one most people have on day one: `my-photos/good/` (a fifth of the photos, "
        "spread evenly by name, are held out for testing) and optionally `my-photos/<kind>/` with masks in "
        "`my-photos/masks/<kind>/`. PNG, JPEG, BMP, TIFF, WebP or GIF, grey or colour, any "
        "size; each "
        "photo is resized to a square (the run's `--size`), so crop them to the part first. "
        "Photos to check later need no layout at all.",
        SETUP.replace("nb.settings()", "nb.settings(say=False)"),  # its folders said below
        "## Your photos\nHere one set of the real-photo suite stands in for them (`python -m "
        "anomaly make-photos data/photos`): `coins`, one coin per photo like one part per "
        "photo on a line, real variation between coins, and drawn defects with masks in the "
        "test folders. With your own, set `data = 'my-photos'`. The first thing to check "
        "is what the loader will find in each folder:",
        "# NBVAL_IGNORE_OUTPUT\nfrom anomaly import notebook_photos as own\n"
        "P = own.photo_settings(S)  # where the stand-in, the new photos and the run go\n"
        "data = own.stand_in(P)\nprint(own.folder_tree(data))",
        "## What the loader checks\nEvery photo is opened before training starts, and a "
        "problem stops it with a message that names the file and the fix, not a traceback "
        "from inside torch. Three common ones, each made in a small copy of the folder, and "
        "what `train` or `score` then says (compared by nbval):",
        CHECK + "print(own.checks_text(own.loader_checks(data)))",
        "## Train with `--method auto`\nYou do not know yet which method suits your photos, and "
        "you may have no defective ones to try them on. `auto` holds out some good training "
        "photos, makes synthetic defects in copies of them (pasted blobs, and small regions "
        "blurred, tinted or faintly overlaid), fits each candidate of a small grid "
        "(`CANDIDATES` in `anomaly.detectors.auto`: methods, backbones, sizes, image scores) on "
        "the rest, keeps the one that best separates the fakes from the held-out good photos, "
        "and fits it on all of them. No label is read. The shell does the same:\n\n"
        "    python -m anomaly train --data data/photos/coins --method auto --val-fraction 0.25 "
        "--seed 7 --out runs/own-photos/coins\n    python -m anomaly score --run runs/own-photos/coins\n\n"
        "(`--val-fraction 0.25` holds out a quarter of the good photos for the threshold "
        "below.) The table is `selection.json` in the run folder; the star marks the choice:",
        "# NBVAL_IGNORE_OUTPUT\nrun = own.train(P, data)  # trained and scored, or reused\n"
        "print(own.selection_table(run))",
        "## How it did, and a threshold with a guarantee\nYour `test/` folders, if you have "
        "them, say how far to trust it: read the weakest defect kind, not only the mean. A "
        "score becomes PASS or REJECT at a threshold. The conformal rule takes it from the "
        "held-out good photos and guarantees the false-reject rate: on average at most alpha "
        "of new good parts from the same process are rejected "
        "(`anomaly.metrics.threshold_conformal`). It needs at least 1/alpha - 1 held-out "
        "photos (19 for 5 %), and holds only for new good photos exchangeable with the "
        "held-out ones (taken the same way, of other parts of the same kind); it says nothing "
        'about escapes. The labelled test photos check both (the lines "on the labelled test '
        'images"; a warning follows when far more good photos are rejected than the '
        "guarantee allows, or than the 1 % the default threshold aims at, as `score` prints "
        "it). In the shell: "
        "`python -m anomaly threshold --run RUN --rule conformal --value 0.05`.",
        "# NBVAL_IGNORE_OUTPUT\nprint(own.test_results(run))  # at the default threshold\n"
        "t, alpha = own.held_out_threshold(run, P.alpha)  # saved: predict uses it\n"
        "print(own.threshold_text(run, t))",
        "## Set the threshold on good photos from the line\nThe guarantee said at most 5 % of "
        "good photos rejected; the test photos show far more, and the warning says so. The "
        "held-out photos were not "
        "exchangeable with the test ones: they are crops of the training coins, a few pixels "
        "from training crops, so they score lower than photos of "
        "other coins (numbers in the last section). A factory meets the same when the held-out images are consecutive "
        "frames of one part, or one batch. The remedy: set the threshold on a separate folder "
        "of good photos taken as the photos to check will be (other parts and batches, the "
        "same camera and light, none used in training). Here 24 fresh good crops of the test "
        "coins stand in for them (another seed; not the test photos themselves). In the shell: "
        "`python -m anomaly threshold --run RUN --rule conformal --value 0.05 --good-images "
        "data/coins-good-from-the-line`. The table compares both thresholds on the labelled "
        "test photos. Expect fewer defects caught: the first threshold caught them by "
        "rejecting nearly every good coin too; what is left is what the detector can tell "
        "apart, weakest on the quiet kinds (discolour, blur, stain):",
        "# NBVAL_IGNORE_OUTPUT\ngood = own.good_photos(P)  # 24 new good crops of the test coins "
        "(4 in a smoke run)\nt_line = anomaly.set_threshold(run, 'conformal', P.alpha, "
        "good_images=good)\nprint(own.threshold_text(run, t_line))\nprint(own.before_after(run, "
        "{'held-out training photos': t, 'good photos from the line': t_line}))",
        "## Check a folder of new photos\n`predict` scores each photo of a folder with the run "
        "and its threshold, and writes an overlay per photo: verdict and score on top, the "
        "evidence on the run's scale (yellow: raised, red: above its pixel threshold, which "
        "the good photos from the line set too: where their maps end). The verdict follows "
        "the score; red marks what rejected a photo, and on one that passes the same pixels "
        "are the strongest yellow. In "
        "the shell: `python -m anomaly predict --run RUN "
        "data/coins-to-check/`. These are new crops of the test coins, checked at the "
        "threshold set on the good photos from the line; their names carry the truth only so "
        "you can judge the verdicts:",
        "# NBVAL_IGNORE_OUTPUT\nresults, _ = anomaly.predict_images(run, [own.new_photos(P)])\n"
        "print(own.verdicts_text(results))\nown.verdicts_figure(results)",
        "## When it does poorly\n**Good photos rejected far more often than alpha**: the "
        "photos the threshold was set on were not like the new ones. Here the held-out ones "
        "are crops of 12 training coins, several of each a few pixels apart, "
        "so a held-out photo nearly repeats a training one, while the test and new photos show 8 other coins "
        "(the first lines below: the good photos from the line score like the test ones). With "
        "your own: set it on good photos from the line (`--good-images`), one photo per part, "
        "parts from several batches or days. The same closeness makes auto's fakes easier than "
        "real defects (scores near 1.0 in its table). **A weak defect kind**: look at its "
        "overlays (`python -m anomaly score --run RUN` draws them in `RUN/overlays/` at the "
        "run's threshold). Strong evidence on the defect (the strongest yellow on a "
        "photo that passes) but a low image score: try "
        "`--score-topk 0.01` (the mean of the top 1 % of the map, not its maximum). Nothing on "
        "the map: finer cells (`--method patchknn --size 448 --layers features.6,features.10 "
        "--feature-pad 32 --score-border 16 --smooth-sigma 4`, auto's finest candidate), or "
        "more good photos (notebook 06's train-size curves). **Auto's "
        "choice**: its docstring says where it stops being trustworthy:",
        "# NBVAL_IGNORE_OUTPUT\nprint(own.held_out_vs_new(run))\nprint(own.synthetic_vs_real(run))"
        "\nprint(own.auto_limits())",
    ],
}


NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def build(out_dir: Path = NOTEBOOK_DIR, names: list[str] | None = None) -> None:
    """Write the notebooks `names` (default all; a name's leading digits are enough)."""
    for name, cells in NOTEBOOKS.items():
        if names and not any(name == n or name.startswith(n + "_") for n in names):
            continue
        book = new_notebook()
        book.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        for i, text in enumerate(cells):
            prose = text.startswith(("# 0", "## ")) or text.rstrip().endswith((".", ":"))
            is_code = i == 1 or not prose
            book.cells.append(new_code_cell(text) if is_code else new_markdown_cell(text))
        nbformat.write(book, out_dir / f"{name}.ipynb")


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip_widget_state(out_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Drop the widget state (`metadata.widgets`) that executing a notebook with widgets stores:
    it is large, and the widgets cannot run from it on the web; and the outputs' views of those
    widgets, which point at the state dropped (JupyterLab then says the model is not found),
    keeping their text. Returns the notebooks changed."""
    changed = []
    for path in sorted(out_dir.glob("*.ipynb")):
        book = nbformat.read(path, 4)
        views = [
            o.data.pop(WIDGET_VIEW)
            for cell in book.cells
            for o in cell.get("outputs", [])
            if WIDGET_VIEW in o.get("data", {})
        ]
        if book.metadata.pop("widgets", None) is not None or views:
            nbformat.write(book, path)
            changed.append(path)
    return changed


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--strip"]:
        for path in strip_widget_state():
            print(f"stripped the widget state of {path}")
    else:
        build(names=sys.argv[1:])  # e.g. `python scripts/build_notebooks.py 07`: only notebook 07
