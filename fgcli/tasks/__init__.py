"""The jobs behind the commands, one module each: `eval_report` (fgcli eval), `export_model` (fgcli export),
`predict_images` (fgcli predict), `bench_formats` (fgcli bench), `calibrate_checkpoint` (fgcli calibrate),
`ood_report` (eval --ood) and `attention_viz` (fgcli attention-viz). Each returns a result object; printing it
is the command's job. Importing the package is light."""
