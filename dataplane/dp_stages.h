/*
 * dp_stages.h - the pipeline stages' process entry points (`favo stage
 * ingress|batcher|engine|egress ...`, started by `favo serve`; see
 * dp_stages.c). Each returns the process exit status.
 */
#ifndef DP_STAGES_H
#define DP_STAGES_H

int dp_stage_ingress(int argc, char **argv);
int dp_stage_batcher(int argc, char **argv);
int dp_stage_engine(int argc, char **argv);
int dp_stage_egress(int argc, char **argv);

#endif /* DP_STAGES_H */
